"""Healing a pruned model by feature mimicry instead of the KL of the logits (MiR: Wang et al., "Compressing
Models with Few Samples: Mimicking then Replacing", CVPR 2022).

The cut keeps the teacher's classifier and the shape of its last feature map (the residual streams are
not pruned), so the pruned student can learn to reproduce that map, its classifier frozen: per patch a
signal of C x H x W numbers instead of ten class probabilities, which puts the student's features where
the teacher's classifier reads them. On one image's patches it healed the ResNet-56 cut better than the
KL did (docs/benchmarks.md, "Matching the last feature map").
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
    """The model's output on `example` in eval mode (BatchNorm statistics untouched), its mode restored."""
    was_training = model.training
    try:
        return model.eval()(example)
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
    student's map has the teacher's shape."""
    try:
        FeatureMimicry.for_models(teacher, student, example)
    except InputError:
        return False
    return True


class FeatureMimicry:
    """Feature mimicry for one teacher-student pair, a training hook (training.TrainingHook) that captures both
    feature maps; `loss` is the loop's loss_fn: the mean squared error between the maps over the teacher's
    mean energy, so that its size does not depend on the model. `freeze_classifier(student)` keeps the
    student's classifier as the teacher's until `on_end`."""

    def __init__(self, layer: str, classifier: str):
        self.layer, self.classifier = layer, classifier
        self.features: dict[str, torch.Tensor] = {}
        self.handles: list = []
        self.trainable: list[tuple[nn.Parameter, bool]] = []

    @classmethod
    def for_models(cls, teacher: nn.Module, student: nn.Module, example: torch.Tensor) -> "FeatureMimicry":
        """The feature map to match, checked to have the same shape in both models."""
        layer = feature_layer(teacher, example)
        num_classes = _forward(teacher, example).shape[1]
        classifier = classifier_name(teacher, num_classes)
        if classifier is None:
            raise InputError(f"--match features needs a classifier with {num_classes} outputs; none found")
        shapes = [_matched_shape(model, example, layer, classifier) for model in (teacher, student)]
        if shapes[0] != shapes[1]:
            raise InputError(f"--match features needs the last feature map ({layer}) to keep its shape, but the "
                             f"cut made it {shapes[1]} from {shapes[0]}: use --match logits or keep the residual "
                             f"streams (--channels internal)")
        return cls(layer, classifier)

    def freeze_classifier(self, student: nn.Module) -> None:
        """No gradient for the student's classifier (before the loop builds its optimizer and DDP wrapper)."""
        head = dict(student.named_modules())[self.classifier]
        self.trainable = [(p, p.requires_grad) for p in head.parameters()]
        head.requires_grad_(False)

    def on_start(self, teacher: nn.Module, student: nn.Module) -> None:
        self.handles = [_capture(model, self.layer, self.classifier, functools.partial(self.features.__setitem__, role))
                        for role, model in (("teacher", teacher), ("student", student))]

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
