"""Least-squares repair of a pruned model on patches, before any healing.

After a channel cut, a layer that lost input channels but kept all its output channels
(the last convolution of every residual block when the residual streams are kept, a
classifier) no longer computes what the teacher's layer computed. The best weights it can
have are the solution of a linear least-squares problem: the pruned model's inputs to the
layer on patches, the teacher's outputs of the same layer as targets (the reconstruction
step of ThiNet and of He et al.'s channel pruning, here fed with patches instead of
training data). Layers are solved in forward order, each seeing the inputs that the
layers repaired before it produce, so errors do not pile up.

What it recovers on the ResNet-56 at 50% of its parameters, and why healing does not start from it
by default: docs/benchmarks.md, "Against the targets, and what was tried".
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .progress import each

# Rows (output positions) of one batch that enter the normal equations: a 32 px CIFAR
# layer gives 1,024 per patch, far more than a few hundred unknowns need.
MAX_ROWS_PER_BATCH = 65536
# Ridge term, relative to the mean diagonal of X^T X: keeps the solve stable when
# patches leave some input channels nearly constant.
RIDGE = 1e-2


def default_patches(input_size: int) -> int:
    """Enough patches for a stable fit at an affordable cost (two partial forward passes per layer)."""
    return 1024 if input_size <= 64 else 256


def patches_per_pass(input_size: int) -> int:
    """Patches per forward pass: 32 at 224 px keeps a 3x3 layer's unfolded input under ~0.5 GB."""
    return 256 if input_size <= 64 else 32


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer of interest has run."""


def repairable_layers(student: nn.Module, teacher: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the layers to refit, in the order the forward pass runs them: plain Conv2d
    (groups=1, zero padding) and Linear layers present in both models under the same name,
    with all of the teacher's outputs but fewer inputs, called once per forward."""
    teacher_layers = dict(teacher.named_modules())
    candidates = {}
    for name, layer in student.named_modules():
        twin = teacher_layers.get(name)
        if type(layer) is nn.Conv2d and type(twin) is nn.Conv2d:
            if (layer.groups == 1 and twin.groups == 1 and layer.padding_mode == "zeros"
                    and not isinstance(layer.padding, str) and layer.out_channels == twin.out_channels
                    and layer.in_channels < twin.in_channels and layer.kernel_size == twin.kernel_size):
                candidates[name] = layer
        elif type(layer) is nn.Linear and type(twin) is nn.Linear:
            if layer.out_features == twin.out_features and layer.in_features < twin.in_features:
                candidates[name] = layer
    calls: list[str] = []
    hooks = [layer.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
             for name, layer in candidates.items()]
    try:
        with torch.no_grad():
            student.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return [name for name in dict.fromkeys(calls) if calls.count(name) == 1]


def _run_until(model: nn.Module, layer: nn.Module, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input (want="input") or output of `layer` when `model` runs on `x`; stops there."""
    box = {}

    def hook(module, inputs, output):
        box["value"] = inputs[0] if want == "input" else output
        raise _Reached

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    return box["value"]


def _rows(layer: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Y): one row per output position, X the layer's receptive field, Y the target outputs."""
    if isinstance(layer, nn.Conv2d):
        x = F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, C*kh*kw, L
        x = x.transpose(1, 2).reshape(-1, x.shape[1])
        y = outputs.flatten(2).transpose(1, 2).reshape(-1, outputs.shape[1])
    else:
        x, y = inputs.reshape(-1, inputs.shape[-1]), outputs.reshape(-1, outputs.shape[-1])
    if layer.bias is not None:
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    return x, y


def _weights(layer: nn.Module) -> torch.Tensor:
    """The layer's parameters as the (unknowns, outputs) matrix that `_rows`' X multiplies."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach()[:, None]], dim=1)
    return w.T.double()


def _set_weights(layer: nn.Module, solution: torch.Tensor) -> None:
    w = solution.T.to(layer.weight.dtype)
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(w[:, -1])
            w = w[:, :-1]
        layer.weight.copy_(w.reshape(layer.weight.shape))


def reconstruct(student: nn.Module, teacher: nn.Module, batches: Iterable[torch.Tensor],
                layers: list[str] | None = None, progress: bool = False) -> dict:
    """Refit `layers` of the pruned `student` (default: `repairable_layers`) by least squares so
    that each reproduces the teacher's layer output on `batches` (normalised model inputs).

    A layer keeps its old weights if the fit does not lower its error. Returns {"layers",
    "patches", "error_before", "error_after"}, the errors being the mean relative squared error
    of the refitted layers' outputs on the patches.
    """
    batches = list(batches)
    student.eval()
    teacher.eval()
    if layers is None:
        layers = repairable_layers(student, teacher, batches[0][:1])
    student_layers, teacher_layers = dict(student.named_modules()), dict(teacher.named_modules())
    sampler = torch.Generator().manual_seed(0)
    before, after = [], []
    for name in each(layers, "repairing", unit="layer", shown=progress):
        layer, twin = student_layers[name], teacher_layers[name]
        gram = cross = energy = 0
        with torch.no_grad():
            for x in batches:
                rows, targets = _rows(layer, _run_until(student, layer, x, "input"),
                                      _run_until(teacher, twin, x, "output"))
                if len(rows) > MAX_ROWS_PER_BATCH:
                    keep = torch.randperm(len(rows), generator=sampler)[:MAX_ROWS_PER_BATCH].to(rows.device)
                    rows, targets = rows[keep], targets[keep]
                rows, targets = rows.double(), targets.double()
                gram = gram + rows.T @ rows
                cross = cross + rows.T @ targets
                energy = energy + targets.pow(2).sum()
        ridge = RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        solution = torch.linalg.solve(gram + ridge, cross)

        def error(w: torch.Tensor) -> float:  # ||XW - Y||^2 / ||Y||^2 from the accumulated sums
            return float((energy - 2 * (w * cross).sum() + (w * (gram @ w)).sum()) / energy.clamp_min(1e-12))

        before.append(error(_weights(layer).to(gram.device)))
        after.append(min(error(solution), before[-1]))
        if after[-1] < before[-1]:
            _set_weights(layer, solution)
    return {"layers": len(layers), "patches": sum(len(x) for x in batches),
            "error_before": sum(before) / len(before) if before else 0.0,
            "error_after": sum(after) / len(after) if after else 0.0}
