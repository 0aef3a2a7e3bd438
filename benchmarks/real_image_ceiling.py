"""The real-image ceiling: the default 50% cut of the ResNet-56 healed on unlabeled CIFAR images instead of patches.

    python benchmarks/real_image_ceiling.py SOURCE [--steps 1000] [--image-mode auto] [NAME=VALUE ...]
    python benchmarks/real_image_ceiling.py --compare A B [A2 B2 ...]   # paired test of runs' predictions
    python benchmarks/real_image_ceiling.py --compare A B --against-teacher   # ... of their agreement with the teacher
    python benchmarks/real_image_ceiling.py --classes A [B ...]         # top-1 and predictions per class
    python benchmarks/real_image_ceiling.py --teacher-classes SOURCE [SOURCE ...]   # how the teacher labels them

SOURCE is `animals` (or any --image the package takes: a bundled name, a file) for one image's
patches, or a number N: N images of the EVEN-indexed half of cifar10_test_jpeg75.npz, N/10 per
class, written as PNG files to a folder and given to `prune --image FOLDER`; their labels are never
read. Every run is scored on the ODD-indexed half (5,000 images), which no run heals on. Each run
prints one JSON line (top-1 on the odd half, the teacher's, agreement with the teacher) and keeps
its predictions in benchmarks/results/ceiling/NAME.npy, so that `--compare` can test two runs
pairwise (exact McNemar test on the images one gets right and the other wrong).
NAME=VALUE settings as for benchmarks/pilots/prune_pilot.py (DistillConfig, RunConfig, PruneConfig fields).
`--ema DECAY` is the package's `ema=DECAY` (DistillConfig; `--ema` on the command line): healing keeps an
exponential moving average of the weights (compress1img/averaging.py) and the averaged model is scored.
`--balance K` draws K times the batch of patches and
keeps a class-balanced batch by the teacher's top-1 (the most confident patches of each class in turn):
teacher-guided selection, put in as a patch source of the script's own. `--realistic K` draws K times the batch
and keeps the patches whose statistics in the teacher are closest to its training data's (the smallest per-patch
gap to its BatchNorm running statistics). `--hard K` is the package's `hardest_of=K` (DistillConfig;
`--hardest-of K` on the command line): K times the batch drawn, the patches on which the student, as it is at
that step, disagrees most with the teacher kept (largest KL at T = 8).
`--adversarial EPS` moves each patch by signed-gradient steps (`--adversarial-steps`, at most EPS per pixel)
towards a larger KL between teacher and student. `--mimic W` is MiR: the student matches the teacher's last
feature map, its classifier frozen, plus W x the KL loss (0: feature matching alone); `--mimic-layer` matches
another module's output instead, several at once (comma-separated), or `blocks`: every residual block's output;
`pre:MODULE` matches MODULE's input (`pre:layer3.8.relu2`: the last map before its final ReLU).
`--anchor PULL` moves every trainable weight PULL of the way back to its value after the cut after each step
(decoupled L2-SP: healing held near the weights the teacher learnt on real data).
`--drop-path RATE` drops each residual branch per patch while healing (stochastic depth, the rate rising with depth to
RATE). `--replace START` has each student block compute as the teacher's block of the same name with a probability
falling from START to 0 over the first `--replace-until` of the steps (progressive module replacing).
`--train-only PATTERN` lets only the student's parameters whose names match PATTERN learn (the rest keep the cut's
values: the teacher's).
`--teacher-bn PATTERN` has the student's BatchNorm layers whose names match PATTERN normalise with the teacher's
running statistics all through healing (put in through a TrainingHook), as the teacher does on the same patches.
`--crop-scale MIN` / `--jitter J` give images used whole stronger views (each image's own random resized crop
keeping at least MIN of its area, brightness/contrast/saturation factors in [1 - J, 1 + J]) before the loop's flip,
shift and CutMix; `--cutmix-per-image` is `mix=cutmix-per-image` (each image its own CutMix box and partner:
the default for images used whole since 2026-12-07, so the flag matters for patches; `mix=cutmix mix_alpha=0.25`
gives images the one box of the runs before);
`--blend SHARE` draws that share of every batch from Animals' patches and the rest from SOURCE.
`--refine POOL` heals on a pool of POOL patches whose pixels were first refined so that the teacher's
per-layer batch statistics match its BatchNorm running statistics (DeepInversion's loss, started from the
image's patches; `--refine-iterations`, `--refine-lr`, `--refine-tv` for a smoothness prior, `--refine-ce` for
DeepInversion's class term towards evenly spread random classes); `--refine POOL --refine-iterations 0` is the
same pool unrefined, the control.
`--crop-fractions F[,F...]` sets the patch pipeline's first crop (PatchConfig.crop_fraction: its side is F times the
image's shorter side, the paper's 0.5) before it is shrunk to 45 px: with several, each patch is cut at one of them,
drawn at random (one image seen at several zooms).
`--jpeg LOW,HIGH[,SHARE]` passes SHARE (default all) of each batch through JPEG at a quality drawn per patch in
[LOW, HIGH] before the loop's augmentation (the test file went through JPEG at quality 75).
`--jacobian WEIGHT` adds Jacobian matching to the last feature map (`--mimic 0`): on `--jacobian-share` of every batch
(a quarter by default), WEIGHT x the squared distance between the teacher's and the student's input gradients of
the teacher's top class's logit, each scaled to unit length (Srinivas and Fleuret, ICML 2018).
`--class-weighted POWER` weighs each patch's feature-map error by (1 / (C x the share of its teacher class so far))
** POWER, at most 10: healing evened out towards the classes the teacher sees least.
`--drop-list BLOCK[,BLOCK...]` drops these blocks (in this order) instead of the ones `drop_blocks=N` would choose
(PruneConfig.blocks_to_drop, `prune --drop-block`; benchmarks/pilots/block_recoverability.py prints such lists).
`--save-model` also keeps the healed module (NAME.pt) and its odd-half logits (NAME-logits.npy), for
benchmarks/pilots/soup.py.
"""
import argparse
import dataclasses
import functools
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import jpeg

from compress1img import DistillConfig, PatchConfig, PruneConfig, RunConfig, TrainingHook, load_eval_data, prune
from compress1img.augment import default_augment, mixing_for_source
from compress1img.evaluate import normalize, predict
from compress1img.losses import kl_loss
from compress1img.mimicry import HEAD_INPUT, FeatureMimicry
from compress1img.models import load_model
from compress1img.patches import mix_seed
from compress1img.sources import MultiImagePatches, open_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paths import ANIMALS, CIFAR_TEST, R56  # noqa: E402
from overrides import parse, with_overrides  # noqa: E402

RESULTS = Path("benchmarks/results/ceiling")


def halves() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the even- and odd-indexed halves of the test file (5,000 each, 500 per class)."""
    index = np.arange(10_000)
    return index[0::2], index[1::2]


def odd_half_file() -> Path:
    """The odd half as an .npz that --eval-data takes (written once)."""
    path = RESULTS / "odd_half.npz"
    if not path.exists():
        data = np.load(CIFAR_TEST)
        _, odd = halves()
        RESULTS.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=data["images"][odd], labels=data["labels"][odd], classes=data["classes"])
    return path


def even_folder(count: int) -> Path:
    """`count` even-half images, count/10 per class (the first of each class), as PNG files; labels not kept."""
    folder = RESULTS / f"even-{count}"
    if not folder.is_dir() or len(list(folder.glob("*.png"))) != count:
        data = np.load(CIFAR_TEST)
        even, _ = halves()
        labels = data["labels"][even]
        chosen = np.concatenate([even[labels == c][:count // 10] for c in range(10)])
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        images = data["images"]  # read from the .npz once, not once per image
        for i in chosen:
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    return folder


def source_images(source: str) -> str:
    """What SOURCE names, as `prune --image` takes it: N even-half images (a folder), Animals, or itself."""
    return str(even_folder(int(source))) if source.isdigit() else str(ANIMALS) if source == "animals" else source


class ClassBalanced:
    """Batch `index` of `inner`, `factor` times larger, cut down to a batch whose teacher top-1 classes are as
    even as the candidates allow: round-robin over the classes, each giving its most confident patch next."""

    def __init__(self, inner, teacher, factor: int):
        self.inner, self.teacher, self.factor = inner, teacher, factor
        self.size = inner.size

    @torch.no_grad()
    def batch(self, n: int, index: int) -> torch.Tensor:
        candidates = self.inner.batch(n * self.factor, index)
        probs = self.teacher.module(normalize(candidates, self.teacher.mean, self.teacher.std)).softmax(1)
        confidence, label = probs.max(1)
        queues = [sorted((i for i in range(len(label)) if label[i] == c), key=lambda i: -confidence[i])
                  for c in range(probs.shape[1])]
        chosen: list[int] = []
        while len(chosen) < n:
            for queue in queues:
                if queue and len(chosen) < n:
                    chosen.append(queue.pop(0))
        return candidates[torch.tensor(chosen)]


@torch.no_grad()
def statistics_gaps(teacher, x: torch.Tensor) -> torch.Tensor:
    """Per patch of `x` (in [0, 1]), how far its statistics in the teacher are from its training data's: at the
    input of every BatchNorm layer, the distance between the patch's per-channel means and the running means plus
    that between its per-channel spatial variances and the running variances, summed over the layers (the gap
    `--refine` closes, per patch). The teacher runs under bf16 autocast, as the loop runs it."""
    module = teacher.module.eval()
    gaps = torch.zeros(len(x))

    def record(layer, inputs, _):
        features = inputs[0].float()
        gaps.add_((features.mean((2, 3)) - layer.running_mean).norm(dim=1)
                  + (features.var((2, 3), unbiased=False) - layer.running_var).norm(dim=1))

    handles = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module(normalize(x, teacher.mean, teacher.std))
    finally:
        for h in handles:
            h.remove()
    return gaps


class RealLooking:
    """Batch `index` of `inner`, `factor` times larger, cut down to the `n` patches whose statistics in the teacher
    look most like its training data's (the smallest `statistics_gaps`), in the order drawn."""

    def __init__(self, inner, teacher, factor: int):
        self.inner, self.teacher, self.factor, self.size = inner, teacher, factor, inner.size

    def batch(self, n: int, index: int) -> torch.Tensor:
        candidates = self.inner.batch(n * self.factor, index)
        return candidates[(-statistics_gaps(self.teacher, candidates)).topk(n).indices.sort().values]


class Blended:
    """Batch `index`: a share `share` of one image's patches (`extra`), the rest from `inner` (the real images),
    shuffled together so that CutMix pairs them at random: the images' domain with the patches' variety."""

    def __init__(self, inner, extra, share: float):
        self.inner, self.extra, self.share, self.size = inner, extra, share, inner.size

    def batch(self, n: int, index: int) -> torch.Tensor:
        k = round(n * self.share)
        x = torch.cat([self.inner.batch(n - k, index), self.extra.batch(k, index)])
        return x[torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(index, 0, "blend")))]


class AdversarialPatches(TrainingHook):
    """Batch `index` of `inner`, each patch moved `steps` signed-gradient steps (within `eps` of itself per pixel,
    pixels kept in [0, 1]) towards a larger KL(teacher || student) at T = 8, with the student as it is at that
    step: patches the student gets wrong, made instead of chosen (the pixel-space form of the generator of
    data-free adversarial distillation). Also a TrainingHook, handed both models when training starts; the
    held-out batch, drawn before that, stays as drawn."""

    def __init__(self, inner, mean, std, eps: float, steps: int, temperature: float = 8.0):
        self.inner, self.mean, self.std, self.eps, self.steps = inner, mean, std, eps, steps
        self.temperature, self.size, self.teacher, self.student = temperature, inner.size, None, None
        self.step_size = eps if steps == 1 else 2.5 * eps / steps  # Madry et al.'s rule for several steps

    def on_start(self, teacher, student):
        self.teacher, self.student = teacher, student

    def batch(self, n: int, index: int) -> torch.Tensor:
        x = self.inner.batch(n, index)
        if self.student is None:
            return x
        was_training = self.student.training
        self.student.eval()
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(self.steps):
            inputs = normalize((x + delta).clamp(0, 1), self.mean, self.std)
            t = (self.teacher(inputs).float() / self.temperature).log_softmax(1)
            s = (self.student(inputs).float() / self.temperature).log_softmax(1)
            (grad,) = torch.autograd.grad((t.exp() * (t - s)).sum(), delta)
            delta = (delta + self.step_size * grad.sign()).clamp(-self.eps, self.eps).detach().requires_grad_()
        self.student.train(was_training)
        return (x + delta).clamp(0, 1).detach()


class LastFeatures(FeatureMimicry):
    """MiR ("Compressing Models with Few Samples: Mimicking then Replacing", CVPR 2022): the package's feature
    mimicry (compress1img/mimicry.py) of `layer`'s output ("head": the classifier's input), the classifier
    frozen when training starts, with `kl_weight` x the default KL loss added (0: the student only mimics,
    as MiR does and as `--match features` heals)."""

    def __init__(self, heal: DistillConfig, kl_weight: float = 0.0, layer: str = "layer3", head: str = "linear"):
        super().__init__(HEAD_INPUT if layer == "head" else layer, head)
        self.kl, self.kl_weight = kl_loss(heal), kl_weight

    def on_start(self, teacher, student):
        self.freeze_classifier(student)  # AdamW skips what gets no gradient
        if not self.layer.startswith("pre:"):
            return super().on_start(teacher, student)
        # "pre:MODULE" matches MODULE's input: before the last ReLU, the map still says how negative the
        # teacher's responses are, which the ReLU discards (Heo et al., "A Comprehensive Overhaul of Feature
        # Distillation", ICCV 2019, distil there).
        name = self.layer.removeprefix("pre:")
        self.handles = [dict(model.named_modules())[name].register_forward_pre_hook(
            lambda m, i, role=role: self.features.__setitem__(role, i[0]))
            for role, model in (("teacher", teacher), ("student", student))]

    def loss(self, student_logits, teacher_logits):
        mimic = super().loss(student_logits, teacher_logits)
        return mimic + self.kl_weight * self.kl(student_logits, teacher_logits) if self.kl_weight else mimic


class ClassWeighted(LastFeatures):
    """The last feature map's error weighted per patch towards an even spread of the teacher's classes: a patch
    whose teacher top-1 is class c weighs (1 / (C x the share of c among the patches so far)) ** power, at most
    `cap`, the weights scaled to mean 1 in each batch. One image's patches are far from even in the teacher's eyes
    (photos': nearly half "cat"), and the healed students over-predict "cat" on real images."""

    def __init__(self, heal: DistillConfig, power: float, cap: float = 10.0):
        super().__init__(heal)
        self.power, self.cap, self.counts = power, cap, None

    def loss(self, student_logits, teacher_logits):
        teacher_map, student_map = self.features["teacher"].float().clone(), self.features["student"].float()
        labels = teacher_logits.argmax(1)
        counts = torch.bincount(labels, minlength=teacher_logits.shape[1]).float()
        self.counts = counts if self.counts is None else self.counts + counts
        share = (self.counts / self.counts.sum()).clamp(min=1e-6)
        weight = (1 / (len(share) * share[labels])).pow(self.power).clamp(max=self.cap)
        weight = weight / weight.mean()
        per_patch = (student_map - teacher_map).pow(2).flatten(1).mean(1)
        return (weight * per_patch).mean() / (teacher_map.pow(2).mean() + 1e-6)


class ManyFeatures(LastFeatures):
    """Feature mimicry at several layers at once (FitNets-style hints along the network, MiR's loss at each):
    the mean over `layers` of each map's squared error over the teacher's mean energy there, classifier
    frozen. `blocks` stands for every residual block's output (layer1.0 ... layer3.8 in the ResNet-56):
    the cut keeps the residual streams, so every block's output has the teacher's shape."""

    def __init__(self, heal: DistillConfig, kl_weight: float, layers: list[str], head: str = "linear"):
        super().__init__(heal, kl_weight, layers[-1], head)
        self.layers = layers

    def on_start(self, teacher, student):
        self.freeze_classifier(student)
        modules = {role: dict(model.named_modules()) for role, model in (("teacher", teacher), ("student", student))}
        self.handles = [modules[role][layer].register_forward_hook(
            lambda m, i, o, key=(role, layer): self.features.__setitem__(key, o))
            for role in modules for layer in self.layers]

    def loss(self, student_logits, teacher_logits):
        total = 0.0
        for layer in self.layers:
            t, s = self.features[("teacher", layer)].float().clone(), self.features[("student", layer)].float()
            total = total + torch.nn.functional.mse_loss(s, t) / (t.pow(2).mean() + 1e-6)
        mimic = total / len(self.layers)
        return mimic + self.kl_weight * self.kl(student_logits, teacher_logits) if self.kl_weight else mimic


class JacobianMatched(LastFeatures):
    """The last feature map (MiR, as `--mimic 0`) plus Jacobian matching (Srinivas and Fleuret, "Knowledge Transfer
    with Jacobian Matching", ICML 2018): on the first `share` of every batch, the gradient of the teacher's top
    class's logit with respect to the input pixels, and the student's gradient of the same logit, each scaled to
    unit length, should agree; `weight` x their mean squared distance is added. The paper found it worth most when
    the inputs are few: each input then teaches also how the teacher's answer changes around it. Costs the
    teacher's backward pass and the student's double backward on that share."""

    def __init__(self, heal: DistillConfig, weight: float, share: float):
        super().__init__(heal)
        self.weight, self.share, self.models, self.inputs, self.terms = weight, share, None, None, []

    def on_start(self, teacher, student):
        super().on_start(teacher, student)
        self.models = (teacher, student)
        self.handles.append(student.register_forward_pre_hook(lambda m, i: setattr(self, "inputs", i[0])))

    def loss(self, student_logits, teacher_logits):
        mimic = super().loss(student_logits, teacher_logits)
        teacher, student = self.models
        x = self.inputs[:max(1, round(self.share * len(self.inputs)))].detach()
        top = teacher_logits[:len(x)].argmax(1, keepdim=True)
        with torch.enable_grad():
            xt = x.clone().requires_grad_(True)
            teacher_gradient, = torch.autograd.grad(teacher(xt).gather(1, top).sum(), xt)
            # The student's second pass takes batch statistics of this share and leaves the running ones alone.
            norms = [m for m in student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            for m in norms:
                m.track_running_stats = False
            try:
                xs = x.clone().requires_grad_(True)
                student_gradient, = torch.autograd.grad(student(xs).gather(1, top).sum(), xs, create_graph=True)
            finally:
                for m in norms:
                    m.track_running_stats = True
        t = teacher_gradient.float().flatten(1)
        s = student_gradient.float().flatten(1)
        gap = (s / (s.norm(dim=1, keepdim=True) + 1e-12) - t / (t.norm(dim=1, keepdim=True) + 1e-12)).pow(2).sum(1)
        self.terms.append((mimic.detach().item(), gap.mean().detach().item()))
        return mimic + self.weight * gap.mean()


class Anchored(TrainingHook):
    """Healing held near the weights it starts from (the cut teacher's, learnt on real data): after every
    optimizer step each trainable parameter moves a fraction `pull` of the way back to its starting value, the
    decoupled form of L2-SP (Li et al., "Explicit inductive bias for transfer learning", ICML 2018), so that the
    patches move the weights only where their gradient keeps pushing."""

    def __init__(self, pull: float):
        self.pull, self.start = pull, []

    def on_start(self, teacher, student):
        self.start = [(p, p.detach().clone()) for p in student.parameters() if p.requires_grad]

    @torch.no_grad()
    def after_step(self, step, student, loss):
        for p, p0 in self.start:
            p.lerp_(p0, self.pull)

    def on_end(self, student):
        self.start = []


def residual_blocks(model) -> dict[str, torch.nn.Module]:
    """The model's residual blocks by name (modules with a second convolution and a shortcut; blocks that a
    `--drop-blocks` cut replaced by identities are not among them)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "conv2") and hasattr(m, "shortcut")}


class DropPath(TrainingHook):
    """Stochastic depth while healing (Huang et al., ECCV 2016; timm's drop_path): each residual branch is
    dropped for each patch with a probability rising linearly with depth to `rate`, the kept ones scaled by
    1 / (1 - its probability), so that the student cannot lean on any one block's copy of the teacher's
    patches-only features. Put in as a forward hook on each block's last BatchNorm (the branch's output)."""

    def __init__(self, rate: float, seed: int = 0):
        self.rate, self.handles = rate, []
        self.generator = torch.Generator().manual_seed(mix_seed(seed, 0, "drop-path"))

    def on_start(self, teacher, student):
        blocks = list(residual_blocks(student).values())

        def drop(block, probability):
            def hook(module, inputs, output):
                if not block.training:
                    return output
                keep = (torch.rand(len(output), generator=self.generator) >= probability).to(output)
                return output * (keep / (1 - probability)).view(-1, 1, 1, 1)
            return hook

        if not blocks:
            raise SystemExit("--drop-path: the student has no residual blocks")
        self.handles = [block.bn2.register_forward_hook(drop(block, self.rate * (i + 1) / len(blocks)))
                        for i, block in enumerate(blocks)]

    def on_end(self, student):
        for handle in self.handles:
            handle.remove()
        self.handles = []


class ModuleReplacing(TrainingHook):
    """Progressive module replacing (BERT-of-Theseus, Xu et al., EMNLP 2020): while healing, each residual
    block of the student computes, with a probability falling linearly from `start` to 0 over the first
    `until` of the steps, as the teacher's block of the same name instead, so that every student block learns
    to work amid the teacher's own blocks before it works amid its pruned neighbours."""

    def __init__(self, start: float, until: float, steps: int, seed: int = 0):
        self.start, self.last_step = start, max(1, int(until * steps))
        self.step, self.originals = 0, {}
        self.generator = torch.Generator().manual_seed(mix_seed(seed, 0, "replace"))

    def share(self) -> float:
        return self.start * max(0.0, 1 - self.step / self.last_step)

    def on_start(self, teacher, student):
        teachers = residual_blocks(teacher)

        def replaced(block, teacher_block):
            student_forward = block.forward

            def forward(x):
                if block.training and torch.rand((), generator=self.generator) < self.share():
                    return teacher_block(x)
                return student_forward(x)
            return forward

        for name, block in residual_blocks(student).items():
            if name in teachers:
                self.originals[name] = block
                block.forward = replaced(block, teachers[name])
        if not self.originals:
            raise SystemExit("--replace: no student block has a teacher block of the same name")

    def after_step(self, step, student, loss):
        self.step = step

    def on_end(self, student):
        for block in self.originals.values():
            del block.forward
        self.originals = {}


class TrainOnly(TrainingHook):
    """Only the student's parameters whose names match `pattern` learn while healing; the rest keep the values the
    cut left them (the teacher's, learnt on real data). Put in at the start through requires_grad: the optimizer
    skips parameters without a gradient."""

    def __init__(self, pattern: str):
        self.pattern, self.frozen = re.compile(pattern), []

    def on_start(self, teacher, student):
        trainable = [(name, p) for name, p in student.named_parameters() if p.requires_grad]
        self.frozen = [p for name, p in trainable if not self.pattern.fullmatch(name)]
        if len(self.frozen) == len(trainable):
            raise SystemExit(f"--train-only: no trainable parameter's name matches {self.pattern.pattern}")
        for p in self.frozen:
            p.requires_grad_(False)

    def on_end(self, student):
        for p in self.frozen:
            p.requires_grad_(True)
        self.frozen = []


class TeacherStatistics(TrainingHook):
    """The student's BatchNorm layers whose names match `pattern` normalise with the running statistics they
    start with (the teacher's, from its training data) all through healing, as the teacher does on the same
    patches, instead of with each batch's statistics; their scales and shifts still learn. The first
    convolution of every block keeps its kept channels' filters through the cut, so its BatchNorm's statistics
    are still the teacher's data's wherever the block's input is."""

    def __init__(self, pattern: str):
        self.pattern, self.held = re.compile(pattern), []

    def on_start(self, teacher, student):
        def stay_in_eval(module, mode=True):
            module.training = False
            return module

        self.held = [m for name, m in student.named_modules()
                     if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and self.pattern.fullmatch(name)]
        for m in self.held:  # the loop's student.train() reaches them through this
            m.train = functools.partial(stay_in_eval, m)
            m.training = False

    def after_step(self, step, student, loss):
        pass

    def on_end(self, student):
        for m in self.held:
            del m.train
        self.held = []


def stronger_views(heal: DistillConfig, crop_scale: float, jitter: float):
    """An `augment` for images used whole: each image first gets its own random resized crop (a share of its
    area in [crop_scale, 1], aspect ratio 3/4 to 4/3, bilinear, back to the input size) and its brightness,
    contrast and saturation each scaled by a factor in [1 - jitter, 1 + jitter], in random order per batch;
    then the loop's own flip, shift and CutMix. More views of each image, as "Knowledge distillation: a good
    teacher is patient and consistent" (Beyer et al., CVPR 2022) gives its few-image students: the teacher
    labels every view as it is shown."""
    loop_augment = default_augment(mixing_for_source(heal, "whole"))

    def augment(x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(seed, 0, "stronger-views"))
        n = len(x)
        if crop_scale < 1:
            area = torch.empty(n).uniform_(crop_scale, 1.0, generator=g)
            ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).exp()
            width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 1, 1] = width, height
            theta[:, 0, 2] = (torch.rand(n, generator=g) * 2 - 1) * (1 - width)
            theta[:, 1, 2] = (torch.rand(n, generator=g) * 2 - 1) * (1 - height)
            grid = torch.nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                                                align_corners=False)
        if jitter:
            factors = (1 + (torch.rand(n, 3, generator=g) * 2 - 1) * jitter).to(x.device).view(n, 3, 1, 1, 1)

            def gray(y):
                return (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]).unsqueeze(1)

            ops = [lambda y, f: y * f,
                   lambda y, f: (y - gray(y).mean((1, 2, 3), keepdim=True)) * f + gray(y).mean((1, 2, 3), keepdim=True),
                   lambda y, f: (y - gray(y)) * f + gray(y)]
            for op in torch.randperm(3, generator=g).tolist():
                x = ops[op](x, factors[:, op]).clamp(0, 1)
        return loop_augment(x, seed)
    return augment


def jpeg_compressed(heal: DistillConfig, qualities: tuple[int, int], share: float):
    """An `augment` that passes a share of the batch through JPEG (torchvision's encoder and decoder, each image its
    own quality drawn in [low, high]) before the loop's flip, shift and CutMix: the 32 px test images the teacher
    is scored on went through JPEG at quality 75, and one image's patches never show the student how the teacher
    answers blocking artefacts."""
    loop_augment = default_augment(heal)

    def augment(x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(seed, 0, "jpeg"))
        n = len(x)
        chosen = (torch.rand(n, generator=g) < share).tolist()
        quality = torch.randint(qualities[0], qualities[1] + 1, (n,), generator=g).tolist()
        pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out = [jpeg(pixels[i], quality[i]) if chosen[i] else pixels[i] for i in range(n)]
        compressed = torch.stack(out).to(x.device).float() / 255
        x = compressed.where(torch.tensor(chosen, device=x.device).view(n, 1, 1, 1), x)
        return loop_augment(x, seed)
    return augment


def mimic_layers(spec: str) -> list[str]:
    """`--mimic-layer`: one module name, several separated by commas, or `blocks` (every residual block)."""
    if spec == "blocks":
        return [f"layer{stage}.{block}" for stage in (1, 2, 3) for block in range(9)]
    return spec.split(",")


class BatchNormRefined:
    """A pool of `pool` patches of `inner`, refined once by `iterations` Adam steps on their pixels so that the
    teacher's per-layer batch means and variances (chunks of 256) match its BatchNorm running statistics, the
    data prior it carries from its training set (DeepInversion's loss, started from the image's patches
    instead of noise); batch `index` draws from the pool, seeded by `index`."""

    CHUNK = 256

    def __init__(self, inner, teacher, pool: int, iterations: int, lr: float, tv: float, seed: int = 0,
                 ce: float = 0.0):
        self.size, self.seed = inner.size, seed
        module = teacher.module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        gaps: list[torch.Tensor] = []

        def record(layer, inputs, _):
            x = inputs[0]
            gaps.append((x.mean((0, 2, 3)) - layer.running_mean).norm()
                        + (x.var((0, 2, 3), unbiased=False) - layer.running_var).norm())

        handles = [m.register_forward_hook(record) for m in norms]
        chunks, self.before, self.after = [], [], []
        started = time.time()
        for c in range(math.ceil(pool / self.CHUNK)):
            x = inner.batch(min(self.CHUNK, pool - c * self.CHUNK), c).clone().requires_grad_(True)
            g = torch.Generator().manual_seed(mix_seed(seed, c, "refine-classes"))
            order = torch.randperm(len(x), generator=g)
            targets = order % teacher.num_classes  # every class about equally often
            optimizer = torch.optim.Adam([x], lr=lr)
            for it in range(iterations + 1):
                gaps.clear()
                logits = module(normalize(x, teacher.mean, teacher.std))
                loss = torch.stack(gaps).sum()
                if it == 0:
                    self.before.append(loss.item())
                if it == iterations:
                    self.after.append(loss.item())
                    break
                smooth = (x[:, :, 1:] - x[:, :, :-1]).square().mean() + (x[..., 1:] - x[..., :-1]).square().mean()
                optimizer.zero_grad()
                objective = loss + tv * smooth
                if ce:  # DeepInversion's class term: every class evenly, the targets drawn at random
                    objective = objective + ce * torch.nn.functional.cross_entropy(logits, targets)
                objective.backward()
                optimizer.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            chunks.append(x.detach())
            print(f"refined chunk {c}: statistics gap {self.before[-1]:.1f} -> {self.after[-1]:.1f} "
                  f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        for h in handles:
            h.remove()
        self.pool = torch.cat(chunks)

    def batch(self, n: int, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, index, "refine-pool"))
        return self.pool[torch.randint(len(self.pool), (n,), generator=g)]


def exact_sign_test(only_a: int, only_b: int) -> dict:
    """Exact two-sided McNemar test on the discordant counts: is one right where the other is wrong more often
    than chance says?"""
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"only_a_right": only_a, "only_b_right": only_b, "p_value": min(1.0, 2 * tail)}


def teacher_answers() -> np.ndarray:
    """The teacher's top-1 on the odd half."""
    data = np.load(odd_half_file())
    teacher = load_model(R56, "cifar_resnet56")
    return predict(teacher.module, torch.from_numpy(data["images"]), teacher.mean, teacher.std).argmax(1).numpy()


def compare(names: list[str], against_teacher: bool = False) -> None:
    """Pairs A B [A2 B2 ...]: each pair's test, and with several pairs (seeds) one test on their summed counts.
    `against_teacher`: the teacher's answers stand in for the labels (a test of agreement with the teacher)."""
    labels = teacher_answers() if against_teacher else np.load(odd_half_file())["labels"]
    totals = [0, 0]
    for a, b in zip(names[0::2], names[1::2]):
        pa, pb = np.load(RESULTS / f"{a}.npy"), np.load(RESULTS / f"{b}.npy")
        right_a, right_b = pa == labels, pb == labels
        test = exact_sign_test(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))
        totals = [totals[0] + test["only_a_right"], totals[1] + test["only_b_right"]]
        print(json.dumps({"a": a, "b": b, "top1_a": 100 * right_a.mean(), "top1_b": 100 * right_b.mean(),
                          "difference_pt": 100 * (right_a.mean() - right_b.mean()),
                          "agreement": 100 * (pa == pb).mean(), **test}))
    if len(names) > 2:
        print(json.dumps({"pairs": len(names) // 2, **exact_sign_test(*totals)}))


def per_class(names: list[str]) -> None:
    """Top-1 per class on the odd half, and how often each class is predicted, for the teacher and each run."""
    data = np.load(odd_half_file())
    labels, classes = data["labels"], [str(c) for c in data["classes"]]
    runs = {"teacher": teacher_answers()}
    runs |= {name: np.load(RESULTS / f"{name}.npy") for name in names}
    width = max(map(len, classes + ["predicted"]))
    print(f"{'class':{width}}  " + "  ".join(f"{name[:12]:>12}" for name in runs))
    for c, cls in enumerate(classes):
        print(f"{cls:{width}}  " + "  ".join(f"{100 * (p[labels == c] == c).mean():11.1f}%" for p in runs.values())
              + "   predicted " + " / ".join(str(int((p == c).sum())) for p in runs.values()))
    print(f"{'all':{width}}  " + "  ".join(f"{100 * (p == labels).mean():11.2f}%" for p in runs.values()))


@torch.no_grad()
def teacher_classes(sources: list[str], batches: int = 16, batch_size: int = 128) -> None:
    """How the teacher labels what healing shows it: the share of each class among its top-1 answers on 2,048
    training inputs of each source (its patches, or images used whole, after the loop's flip, shift and CutMix)."""
    teacher = load_model(R56, "cifar_resnet56")
    teacher.module.eval()
    augment = default_augment(DistillConfig())
    classes = [str(c) for c in np.load(odd_half_file())["classes"]]
    for source in sources:
        train = open_source(source_images(source), 32, 0, 1).train
        counts = torch.zeros(len(classes))
        for index in range(batches):
            x = normalize(augment(train.batch(batch_size, index), index), teacher.mean, teacher.std)
            counts += torch.bincount(teacher.module(x).argmax(1), minlength=len(classes))
        shares = 100 * counts / counts.sum()
        print(f"{source}: " + ", ".join(f"{c} {v:.1f}%" for c, v in zip(classes, shares.tolist())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", help="animals, another image, or a number of even-half images")
    parser.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="settings to change")
    parser.add_argument("--steps", type=int, default=1000, help="healing steps")
    parser.add_argument("--image-mode", default="auto", help="auto, patches or whole (as `prune --image-mode`)")
    parser.add_argument("--name", help="name of the run's prediction file (default: from the source, mode, steps "
                                       "and options)")
    parser.add_argument("--ema", type=float, help="heal with a moving average of the weights (decay, e.g. 0.998)")
    parser.add_argument("--balance", type=int, help="draw this many times the batch and keep a class-balanced one")
    parser.add_argument("--realistic", type=int, metavar="K",
                        help="draw K times the batch and keep the patches whose teacher statistics look most real")
    parser.add_argument("--hard", type=int, metavar="K",
                        help="draw K times the batch and keep the patches the student gets most wrong")
    parser.add_argument("--adversarial", type=float, metavar="EPS",
                        help="move each patch towards what the student gets wrong, at most EPS per pixel in [0, 1]")
    parser.add_argument("--adversarial-steps", type=int, default=1, help="signed-gradient steps per batch")
    parser.add_argument("--mimic", type=float, metavar="KL_WEIGHT",
                        help="MiR: match the teacher's last feature map, classifier frozen, plus KL_WEIGHT x the KL")
    parser.add_argument("--mimic-layer", default="layer3",
                        help="the module whose output is matched, pre:MODULE its input (pre:layer3.8.relu2: the "
                             "map before its last ReLU), or head: the classifier's input (pooled); several "
                             "separated by commas, or blocks: every residual block's output")
    parser.add_argument("--jacobian", type=float, metavar="WEIGHT",
                        help="the last feature map plus WEIGHT x the distance between the teacher's and the student's "
                             "input gradients of the teacher's top class, each of unit length (Jacobian matching)")
    parser.add_argument("--jacobian-share", type=float, default=0.25,
                        help="the share of every batch the input gradients are matched on")
    parser.add_argument("--class-weighted", type=float, metavar="POWER",
                        help="weigh each patch's feature-map error by (1 / its teacher class's share) ** POWER")
    parser.add_argument("--anchor", type=float, metavar="PULL",
                        help="after every step, move each weight PULL of the way back to its value after the cut")
    parser.add_argument("--drop-path", type=float, metavar="RATE",
                        help="stochastic depth while healing: the deepest block's branch dropped with this probability")
    parser.add_argument("--replace", type=float, metavar="START",
                        help="progressive module replacing: each block computed as the teacher's with this "
                             "probability at first, falling to 0 by --replace-until of the steps")
    parser.add_argument("--replace-until", type=float, default=0.6, help="share of the steps the replacing lasts")
    parser.add_argument("--train-only", metavar="PATTERN",
                        help="only the student's parameters whose names match this regular expression learn")
    parser.add_argument("--teacher-bn", metavar="PATTERN",
                        help="the student's BatchNorm layers whose names match PATTERN (a regular expression) keep "
                             "the teacher's running statistics while healing")
    parser.add_argument("--cutmix-per-image", action="store_true",
                        help="CutMix with a partner, box size and place of each image's own (the loop's: one box)")
    parser.add_argument("--blend", type=float, metavar="SHARE",
                        help="this share of every batch from Animals' patches, the rest from SOURCE")
    parser.add_argument("--crop-scale", type=float, default=1.0, metavar="MIN",
                        help="stronger views: each image's random resized crop keeps this share of its area or more")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="stronger views: brightness, contrast, saturation factors in [1 - J, 1 + J]")
    parser.add_argument("--refine", type=int, metavar="POOL",
                        help="heal on a pool of POOL patches refined to match the teacher's BatchNorm statistics")
    parser.add_argument("--refine-iterations", type=int, default=20, help="pixel steps per pool chunk")
    parser.add_argument("--refine-lr", type=float, default=0.01, help="Adam step size on pixels in [0, 1]")
    parser.add_argument("--refine-tv", type=float, default=0.0, help="weight of the smoothness prior")
    parser.add_argument("--refine-ce", type=float, default=0.0,
                        help="weight of a cross-entropy term towards random, evenly spread classes")
    parser.add_argument("--crop-fractions", metavar="F[,F...]",
                        help="the first crop's side as a share of the image's shorter side (the paper's 0.5); "
                             "several: each patch at one of them, drawn at random")
    parser.add_argument("--jpeg", metavar="LOW,HIGH[,SHARE]",
                        help="pass a share (default all) of each batch through JPEG at a quality in [LOW, HIGH]")
    parser.add_argument("--drop-list", metavar="BLOCK[,BLOCK...]", help="the residual blocks to drop, in order")
    parser.add_argument("--save-model", action="store_true",
                        help="also save the healed module (NAME.pt, pickled) and its odd-half logits (NAME-logits.npy)")
    parser.add_argument("--against-teacher", action="store_true",
                        help="with --compare: test agreement with the teacher (its answers in place of the labels)")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="top-1 per class and how often each class is predicted: the teacher's and these runs'")
    parser.add_argument("--teacher-classes", nargs="+", metavar="SOURCE",
                        help="the share of each class among the teacher's answers on these sources' training inputs")
    parser.add_argument("--compare", nargs="+", metavar="A B",
                        help="compare two earlier runs by name; more pairs (A2 B2 ...: other seeds) are also tested "
                             "together")
    args = parser.parse_intermixed_args()  # NAME=VALUE settings may follow --steps and the rest
    if args.against_teacher and not args.compare:
        parser.error("--against-teacher goes with --compare")
    if args.compare:
        if len(args.compare) % 2:
            parser.error("--compare takes pairs of run names")
        return compare(args.compare, args.against_teacher)
    if args.classes:
        return per_class(args.classes)
    if args.teacher_classes:
        return teacher_classes(args.teacher_classes)
    if args.source is None:
        parser.error("give a SOURCE, --compare A B or --classes NAME ...")
    options = parse(args.overrides)
    if args.ema is not None:
        options["ema"] = str(args.ema)
    heal = with_overrides(DistillConfig(steps=args.steps), options)
    run = with_overrides(RunConfig(eval_every=250, progress=False), options)
    config = with_overrides(PruneConfig(sparsity=0.5), options)
    if options:
        parser.error(f"unknown settings: {', '.join(options)}")
    if args.drop_list:
        config = dataclasses.replace(config, blocks_to_drop=tuple(args.drop_list.split(",")))
    images = source_images(args.source)
    name = f"{Path(args.source).stem}-{args.image_mode}-{args.steps}" + (f"-seed{run.seed}" if run.seed else "") + (
        f"-ema{heal.ema}" if heal.ema else "")
    hooks = []
    if args.balance:
        name += f"-balance{args.balance}"
        teacher = load_model(R56, "cifar_resnet56")
        images = ClassBalanced(open_source(images, 32, run.seed, 1, mode=args.image_mode).train, teacher,
                               args.balance)
    if args.realistic:
        name += f"-realistic{args.realistic}"
        images = RealLooking(open_source(images, 32, run.seed, 1, mode=args.image_mode).train,
                             load_model(R56, "cifar_resnet56"), args.realistic)
    if args.hard:
        name += f"-hard{args.hard}"
        heal = dataclasses.replace(heal, hardest_of=args.hard)
    if args.adversarial:
        name += f"-adv{args.adversarial:g}x{args.adversarial_steps}"
        teacher = load_model(R56, "cifar_resnet56")
        images = AdversarialPatches(open_source(images, 32, run.seed, 1, mode=args.image_mode).train, teacher.mean,
                                    teacher.std, args.adversarial, args.adversarial_steps)
        hooks.append(images)
    loss_fn = None
    if args.mimic is not None:
        name += f"-mimic{args.mimic:g}" + ("" if args.mimic_layer == "layer3" else
                                           f"-{args.mimic_layer.replace(',', '+').replace(':', '-')}")
        layers = mimic_layers(args.mimic_layer)
        mimic = LastFeatures(heal, args.mimic, layers[0]) if len(layers) == 1 else \
            ManyFeatures(heal, args.mimic, layers)
        hooks.append(mimic)
        loss_fn = mimic.loss
    if args.jacobian is not None:
        if loss_fn is not None:
            parser.error("--jacobian does not combine with --mimic")
        name += f"-jacobian{args.jacobian:g}x{args.jacobian_share:g}"
        jacobian = JacobianMatched(heal, args.jacobian, args.jacobian_share)
        hooks.append(jacobian)
        loss_fn = jacobian.loss
    if args.class_weighted is not None:
        if loss_fn is not None:
            parser.error("--class-weighted does not combine with --mimic")
        name += f"-classweighted{args.class_weighted:g}"
        weighted = ClassWeighted(heal, args.class_weighted)
        hooks.append(weighted)
        loss_fn = weighted.loss
    if args.anchor:
        name += f"-anchor{args.anchor:g}"
        hooks.append(Anchored(args.anchor))
    if args.drop_path:
        name += f"-droppath{args.drop_path:g}"
        hooks.append(DropPath(args.drop_path, run.seed))
    if args.replace:
        name += f"-replace{args.replace:g}-{args.replace_until:g}"
        hooks.append(ModuleReplacing(args.replace, args.replace_until, args.steps, run.seed))
    if args.train_only:
        name += "-trainonly-" + re.sub(r"[^A-Za-z0-9]+", "_", args.train_only).strip("_")
        hooks.append(TrainOnly(args.train_only))
    if args.teacher_bn:
        name += "-teacherbn"
        hooks.append(TeacherStatistics(args.teacher_bn))
    if args.refine:
        name += f"-refine{args.refine}x{args.refine_iterations}-lr{args.refine_lr}" + (
            f"-tv{args.refine_tv}" if args.refine_tv else "") + (
            f"-ce{args.refine_ce}" if args.refine_ce else "")
        teacher = load_model(R56, "cifar_resnet56")
        refined = BatchNormRefined(open_source(images, 32, run.seed, 1, mode=args.image_mode).train, teacher,
                                   args.refine, args.refine_iterations, args.refine_lr, args.refine_tv, run.seed,
                                   args.refine_ce)
        images = refined
    if args.blend:
        name += f"-blend{args.blend:g}"
        images = Blended(open_source(images, 32, run.seed, 1, mode=args.image_mode).train,
                         open_source(str(ANIMALS), 32, run.seed, 1).train, args.blend)
    patch_config = None
    if args.crop_fractions:
        name += f"-crop{args.crop_fractions.replace(',', '+')}"
        fractions = [float(f) for f in args.crop_fractions.split(",")]
        if len(fractions) == 1:
            patch_config = PatchConfig(crop_fraction=fractions[0])
        else:
            zooms = [open_source(images, 32, mix_seed(run.seed, i, "zoom"), 1, mode=args.image_mode,
                                 patch_config=PatchConfig(crop_fraction=f)).train for i, f in enumerate(fractions)]
            images = MultiImagePatches(zooms, run.seed)
    augment = None
    if args.cutmix_per_image:  # the package's mix="cutmix-per-image"
        name += "-cutmix-per-image"
        heal = dataclasses.replace(heal, mix="cutmix-per-image")
    if args.jpeg:
        low, high, *rest = (float(v) for v in args.jpeg.split(","))
        name += f"-jpeg{low:g}-{high:g}" + (f"x{rest[0]:g}" if rest else "")
        augment = jpeg_compressed(heal, (int(low), int(high)), rest[0] if rest else 1.0)
    if args.crop_scale < 1 or args.jitter:
        if augment is not None:
            parser.error("--crop-scale / --jitter do not combine with --jpeg")
        name += f"-views{args.crop_scale:g}x{args.jitter:g}"
        augment = stronger_views(heal, args.crop_scale, args.jitter)
    if args.drop_list:
        name += "-droplist"
    name = args.name or name
    odd = odd_half_file()

    started = time.time()
    result = prune(str(R56), images, config, heal=heal, run=run, arch="cifar_resnet56", eval_data=odd,
                   measure_latency=False, image_mode=args.image_mode, hooks=hooks, loss_fn=loss_fn,
                   augment=augment, patch_config=patch_config)
    labelled = load_eval_data(odd)
    teacher = result.model  # same normalisation as the teacher
    logits = predict(result.model.module, labelled.images, teacher.mean, teacher.std)
    predictions = logits.argmax(1).numpy()
    np.save(RESULTS / f"{name}.npy", predictions)
    if args.save_model:
        torch.save(result.model.module, RESULTS / f"{name}.pt")
        np.save(RESULTS / f"{name}-logits.npy", logits.numpy())
    report = result.report
    print(json.dumps({"name": name, "source": args.source, "ema": args.ema, "balance": args.balance, "hard": args.hard,
                      "realistic": args.realistic, "drop_path": args.drop_path, "train_only": args.train_only,
                      "replace": args.replace and {"start": args.replace, "until": args.replace_until},
                      "crop_scale": args.crop_scale, "jitter": args.jitter, "blend": args.blend,
                      "cutmix_per_image": args.cutmix_per_image, "jpeg": args.jpeg,
                      "dropped_blocks": report.get("dropped_blocks", []),
                      "jacobian": args.jacobian and {
                          "weight": args.jacobian, "share": args.jacobian_share,
                          # (map error, gradient distance) averaged over the first and the last 50 steps
                          "terms_first": np.mean(jacobian.terms[:50], axis=0).tolist(),
                          "terms_last": np.mean(jacobian.terms[-50:], axis=0).tolist()},
                      "class_weighted": args.class_weighted, "crop_fractions": args.crop_fractions,
                      "mimic": args.mimic, "mimic_layer": args.mimic_layer if args.mimic is not None else None,
                      "adversarial": args.adversarial and {"eps": args.adversarial, "steps": args.adversarial_steps},
                      "refine": args.refine and {"pool": args.refine, "iterations": args.refine_iterations,
                                                 "lr": args.refine_lr, "tv": args.refine_tv, "ce": args.refine_ce,
                                                 "gap_before": float(np.mean(refined.before)),
                                                 "gap_after": float(np.mean(refined.after))},
                      "image_mode": report["image_mode"],
                      "images_used": report["images_used"], "steps": args.steps, "options": args.overrides,
                      "top1": report["final_top1"], "teacher_top1": report["teacher_top1"],
                      "change_pt": report["top1_change"], "test_agreement": report["test_agreement"],
                      "holdout_agreement": report["holdout_agreement"],
                      "top1_after_cut": report["per_iteration"][0].get("top1_after_cut"),
                      "top1_after_repair": report["per_iteration"][0].get("top1_after_repair"),
                      "heal_seconds": report["per_iteration"][0].get("heal_seconds"),
                      # every 250 steps: top-1 on a strided 1,000 of the odd half, agreement on held-out inputs
                      "history": [[row["step"], row.get("accuracy"), row.get("holdout_agreement")]
                                  for row in report["per_iteration"][0].get("heal_history", [])],
                      "minutes": (time.time() - started) / 60, "check_top1": 100 * float(
                          (torch.from_numpy(predictions) == labelled.labels).float().mean())}))


if __name__ == "__main__":
    main()
