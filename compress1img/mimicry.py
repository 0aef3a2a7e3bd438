"""Training a student by feature mimicry instead of the KL of the logits (MiR: Wang et al., "Compressing
Models with Few Samples: Mimicking then Replacing", CVPR 2022).

The cut keeps the teacher's classifier and the shape of its last feature map (the residual streams are
not pruned), so the pruned student can learn to reproduce that map, its classifier frozen: per patch a
signal of C x H x W numbers instead of ten class probabilities, which puts the student's features where
the teacher's classifier reads them. A new student whose last feature map and classifier have the teacher's
shapes takes a copy of the classifier (`adopt_classifier`) and learns the same way. On one image's patches
both learnt more than with the KL (docs/benchmarks.md, "Matching the last feature map" and "Learning the
teacher's last feature map").
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .models.transforms import classifier_name

# The classifier's input stands in for the feature map in models that have none (a ViT's class token).
HEAD_INPUT = "the classifier's input"


@torch.no_grad()
def _forward(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """The model's output on `example` in eval mode (BatchNorm statistics untouched), its mode restored; run
    where the model's parameters are (a teacher may sit on the GPU beside a new student on the CPU)."""
    was_training = model.training
    weight = next(model.parameters(), None)
    try:
        return model.eval()(example.to(weight.device) if weight is not None else example)
    finally:
        model.train(was_training)


def _outputs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of the model's top-level children, in the order the forward pass calls them."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    handles = [child.register_forward_hook(
        lambda m, i, o, name=name: calls.append((name, tuple(o.shape) if isinstance(o, torch.Tensor) else ())))
        for name, child in model.named_children()]
    try:
        _forward(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def feature_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The top-level module whose output is the last feature map (4-D, more than one position) of the forward
    pass, or HEAD_INPUT when the model has none."""
    maps = [name for name, shape in _outputs(model, example) if len(shape) == 4 and shape[2] * shape[3] > 1]
    return maps[-1] if maps else HEAD_INPUT


def _capture(model: nn.Module, layer: str, classifier: str, record):
    """Calls `record(features)` with what mimicry matches on every forward pass of `model`: `layer`'s output,
    or the classifier's input; returns the hook's handle."""
    modules = dict(model.named_modules())
    if layer == HEAD_INPUT:
        return modules[classifier].register_forward_pre_hook(lambda m, i: record(i[0]))
    return modules[layer].register_forward_hook(lambda m, i, o: record(o))


def _matched_shape(model: nn.Module, example: torch.Tensor, layer: str, classifier: str) -> tuple[int, ...]:
    """The shape of what mimicry matches in `model`."""
    seen: list[torch.Tensor] = []
    handle = _capture(model, layer, classifier, seen.append)
    try:
        _forward(model, example)
    finally:
        handle.remove()
    return tuple(seen[-1].shape) if seen else ()


def keeps_feature_map(teacher: nn.Module, student: nn.Module, example: torch.Tensor) -> bool:
    """Whether the student can learn the teacher's last feature map: the teacher has a classifier and the
    student's map and classifier have the teacher's shapes."""
    try:
        FeatureMimicry.for_models(teacher, student, example)
    except InputError:
        return False
    return True


def _parameter_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.state_dict().items()}


def adopt_classifier(teacher: nn.Module, student: nn.Module, example: torch.Tensor) -> None:
    """Copies the teacher's classifier into a new student whose last feature map and classifier have the
    teacher's shapes (checked as `FeatureMimicry.for_models` does), so that it can learn the teacher's features."""
    mimicry = FeatureMimicry.for_models(teacher, student, example, new_student=True)
    heads = [dict(model.named_modules())[name] for model, name in ((teacher, mimicry.classifier),
                                                                   (student, mimicry.student_classifier))]
    heads[1].load_state_dict(heads[0].state_dict())


class FeatureMimicry:
    """Feature mimicry for one teacher-student pair, a training hook (training.TrainingHook) that captures both
    feature maps; `loss` is the loop's loss_fn: the mean squared error between the maps over the teacher's
    mean energy, so that its size does not depend on the model. `freeze_classifier(student)` keeps the
    student's classifier as the teacher's until `on_end`. The student's layers have the teacher's names (a
    pruned copy) unless `student_layer` and `student_classifier` name its own (a new student)."""

    def __init__(self, layer: str, classifier: str, student_layer: str | None = None,
                 student_classifier: str | None = None):
        self.layer, self.classifier = layer, classifier
        self.student_layer, self.student_classifier = student_layer or layer, student_classifier or classifier
        self.features: dict[str, torch.Tensor] = {}
        self.handles: list = []
        self.trainable: list[tuple[nn.Parameter, bool]] = []

    @classmethod
    def for_models(cls, teacher: nn.Module, student: nn.Module, example: torch.Tensor,
                   new_student: bool = False) -> "FeatureMimicry":
        """The feature maps to match, checked to have the same shape in both models, and the classifiers reading
        them, checked to have the same parameter shapes. The student's layers are those of the teacher's names
        where it has them (a pruned copy, a student of the same family), else its own last feature map and
        classifier, found as the teacher's are. `new_student` only words the errors for a student that was not
        cut from the teacher."""
        scripted = [who for who, model in (("teacher", teacher), ("student", student))
                    if isinstance(model, torch.jit.ScriptModule)]
        if scripted:  # TorchScript runs no forward hooks
            raise InputError(f"--match features needs to read the {scripted[0]}'s layers, which a TorchScript model "
                             f"does not allow: use --match logits")
        layer = feature_layer(teacher, example)
        num_classes = _forward(teacher, example).shape[1]
        classifier = classifier_name(teacher, num_classes)
        if classifier is None:
            raise InputError(f"--match features needs a classifier with {num_classes} outputs; none found")
        names = dict(student.named_modules())
        student_layer = layer if layer == HEAD_INPUT or layer in names else feature_layer(student, example)
        student_classifier = classifier if classifier in names else classifier_name(student, num_classes)
        if student_classifier is None:
            raise InputError(f"--match features needs a student classifier with {num_classes} outputs; none found")
        shapes = [_matched_shape(teacher, example, layer, classifier),
                  _matched_shape(student, example, student_layer, student_classifier)]
        if not shapes[0]:  # a torch.export program runs its graph, not its modules' forward methods
            raise InputError("--match features needs to read the teacher's layers, which this model does not run as "
                             "modules: use --match logits")
        if shapes[0] != shapes[1] and new_student:
            raise InputError(f"--match features needs a student whose last feature map has the teacher's shape, "
                             f"{shapes[0][1:]} ({layer}); the student's ({student_layer}) is {shapes[1][1:]}: "
                             f"use --match logits")
        if shapes[0] != shapes[1]:
            raise InputError(f"--match features needs the last feature map ({layer}) to keep its shape, but the "
                             f"cut made it {shapes[1]} from {shapes[0]}: use --match logits or keep the residual "
                             f"streams (--channels internal)")
        heads = [_parameter_shapes(dict(model.named_modules())[name])
                 for model, name in ((teacher, classifier), (student, student_classifier))]
        if heads[0] != heads[1]:
            raise InputError(f"--match features needs a student classifier of the teacher's shape ({classifier}: "
                             f"{heads[0]}); the student's ({student_classifier}) has {heads[1]}: use --match logits")
        return cls(layer, classifier, student_layer, student_classifier)

    def freeze_classifier(self, student: nn.Module) -> None:
        """No gradient for the student's classifier (before the loop builds its optimizer and DDP wrapper)."""
        head = dict(student.named_modules())[self.student_classifier]
        self.trainable = [(p, p.requires_grad) for p in head.parameters()]
        head.requires_grad_(False)

    def on_start(self, teacher: nn.Module, student: nn.Module) -> None:
        self.handles = [_capture(model, layer, classifier, functools.partial(self.features.__setitem__, role))
                        for role, model, layer, classifier in (
                            ("teacher", teacher, self.layer, self.classifier),
                            ("student", student, self.student_layer, self.student_classifier))]

    def after_step(self, step: int, student: nn.Module, loss: float) -> None:
        pass

    def on_end(self, student: nn.Module) -> None:
        for handle in self.handles:
            handle.remove()
        for p, trainable in self.trainable:
            p.requires_grad_(trainable)
        self.handles, self.trainable = [], []
        self.features.clear()

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        # The teacher ran under inference_mode: a copy made here can be saved for the backward pass.
        teacher_map, student_map = self.features["teacher"].float().clone(), self.features["student"].float()
        return F.mse_loss(student_map, teacher_map) / (teacher_map.pow(2).mean() + 1e-6)
