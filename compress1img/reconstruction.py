"""Least-squares repair of a pruned model on patches, before any healing.

After a channel cut, a layer that lost input channels but kept all its output channels
(the last convolution of every residual block when the residual streams are kept, a
classifier) no longer computes what the teacher's layer computed. The best weights it can
have are the solution of a linear least-squares problem: the pruned model's inputs to the
layer on patches, the teacher's outputs of the same layer as targets (the reconstruction
step of ThiNet and of He et al.'s channel pruning, here fed with patches instead of
training data). Layers are solved in forward order, each seeing the inputs that the
layers repaired before it produce, so errors do not pile up. The teacher's outputs do not
change while the student is repaired: one teacher pass per batch gives the targets of as many
consecutive layers as TARGET_BYTES holds, instead of a pass per layer.

What it recovers on the ResNet-56 at 50% of its parameters, and why healing does not start from it
by default: docs/benchmarks.md, "Against the targets, and what was tried".
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .progress import each

# Rows (output positions) of one batch that enter the normal equations: a 32 px CIFAR
# layer gives 1,024 per patch, far more than a few hundred unknowns need.
MAX_ROWS_PER_BATCH = 65536
# Teacher targets (the rows kept) held at once: the layers whose targets fit share one teacher pass per
# batch (all 27 repaired layers of the CIFAR ResNet-56 at 1,024 patches need about 0.6 GB).
TARGET_BYTES = 256 * 2**20
# Ridge term, relative to the mean diagonal of X^T X: keeps the solve stable when
# patches leave some input channels nearly constant.
RIDGE = 1e-2


def default_patches(input_size: int) -> int:
    """Enough patches for a stable fit at an affordable cost (a partial forward pass of the student per layer)."""
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
    return _outputs_until(model, {"value": layer}, x, want)["value"]


def _outputs_until(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor, want: str = "output",
                   keep: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, value: value
                   ) -> dict[str, torch.Tensor]:
    """{name: keep(name, the input (want="input") or output of that layer)} when `model` runs on `x`; stops once
    all have run."""
    box = {}

    def hook(module, inputs, output, name):
        box[name] = keep(name, inputs[0] if want == "input" else output)
        if len(box) == len(layers):
            raise _Reached

    handles = [layer.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
               for name, layer in layers.items()]
    try:
        model(x)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return box


def _input_rows(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """X: one row per output position, the layer's receptive field (and a 1 for the bias)."""
    if isinstance(layer, nn.Conv2d):
        x = F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, C*kh*kw, L
        x = x.transpose(1, 2).reshape(-1, x.shape[1])
    else:
        x = inputs.reshape(-1, inputs.shape[-1])
    if layer.bias is not None:
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    return x


def _output_rows(layer: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """Y: the layer's outputs at each position, rows in the order of `_input_rows`."""
    if isinstance(layer, nn.Conv2d):
        return outputs.flatten(2).transpose(1, 2).reshape(-1, outputs.shape[1])
    return outputs.reshape(-1, outputs.shape[-1])


def _kept_rows(rows: int, sampler: torch.Generator) -> torch.Tensor | None:
    """Which of a batch's rows enter the normal equations: a random MAX_ROWS_PER_BATCH of them, or all (None)."""
    return torch.randperm(rows, generator=sampler)[:MAX_ROWS_PER_BATCH] if rows > MAX_ROWS_PER_BATCH else None


def _layer_groups(teacher: nn.Module, names: list[str], batches: list[torch.Tensor]) -> list[dict[str, int]]:
    """`names` cut into runs of consecutive layers whose kept target rows, for all batches, fit TARGET_BYTES:
    [{name: output rows per sample}, ...]."""
    layers = {name: layer for name, layer in teacher.named_modules() if name in names}
    with torch.no_grad():
        shapes = _outputs_until(teacher, layers, batches[0][:1],
                                keep=lambda name, out: _output_rows(layers[name], out).shape)
    groups: list[dict[str, int]] = []
    held = 0
    for name in names:
        per_sample, width = shapes[name]
        size = sum(min(len(x) * per_sample, MAX_ROWS_PER_BATCH) for x in batches) * width * batches[0].element_size()
        if not groups or held + size > TARGET_BYTES:
            groups.append({})
            held = 0
        groups[-1][name] = per_sample
        held += size
    return groups


def _targets(teacher: nn.Module, group: dict[str, int], batches: list[torch.Tensor], sampler: torch.Generator
             ) -> dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """{name: [(the teacher's output rows kept, which rows: None for all), one per batch]} for the group's layers,
    from one teacher pass per batch."""
    layers = {name: layer for name, layer in teacher.named_modules() if name in group}
    keeps = {name: [_kept_rows(len(x) * per_sample, sampler) for x in batches] for name, per_sample in group.items()}
    targets: dict[str, list] = {name: [] for name in group}
    with torch.no_grad():
        for b, x in enumerate(batches):

            def kept(name: str, out: torch.Tensor, b: int = b) -> torch.Tensor:  # in the hook: not the whole output
                y, keep = _output_rows(layers[name], out), keeps[name][b]
                return y if keep is None else y[keep.to(y.device)]

            for name, y in _outputs_until(teacher, layers, x, keep=kept).items():
                targets[name].append((y, keeps[name][b]))
    return targets


def _weights(layer: nn.Module) -> torch.Tensor:
    """The layer's parameters as the (unknowns, outputs) matrix that `_input_rows`' X multiplies."""
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
    student_layers = dict(student.named_modules())
    # The keeps are drawn layer by layer, batch by batch, whatever the groups: the same rows as one pass per layer.
    sampler = torch.Generator().manual_seed(0)
    groups = _layer_groups(teacher, layers, batches)
    targets: dict[str, list] = {}
    before, after = [], []
    for name in each(layers, "repairing", unit="layer", shown=progress):
        if name not in targets:  # the first layer of a group
            targets = _targets(teacher, next(group for group in groups if name in group), batches, sampler)
        layer = student_layers[name]
        gram = cross = energy = 0
        with torch.no_grad():
            for x, (y, keep) in zip(batches, targets.pop(name)):
                rows = _input_rows(layer, _run_until(student, layer, x, "input"))
                if keep is not None:
                    rows = rows[keep.to(rows.device)]
                rows, y = rows.double(), y.double()
                gram = gram + rows.T @ rows
                cross = cross + rows.T @ y
                energy = energy + y.pow(2).sum()
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
