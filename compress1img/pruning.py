"""Pruning: structured (channels removed with torch-pruning's DepGraph) or unstructured (weights zeroed).

`--sparsity S` is the fraction of *parameters* removed (or of MACs with target
"macs"). torch-pruning's `pruning_ratio` counts channels per layer (0.5 removes
~75% of parameters), so `prune_to_budget` solves for the ratio that meets the
budget by bisection on copies of the model, counting with torch-pruning's own
counter. Each call prunes from the model as it is now, which makes iterative
pruning (prune, heal, prune again) stateless and resumable.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .config import require, require_choice, require_int
from .errors import Compress1imgError, InputError, first_line
from .models.transforms import (ShortcutConv, attention_layers, classifier_name, drop_block,  # noqa: F401 (re-export)
                                freeze_shortcuts, make_prunable, sync_attention_dims)

if TYPE_CHECKING:
    import torch_pruning as tp

MODES = ("structured", "unstructured")
IMPORTANCES = ("l2", "taylor", "bn")
ALLOCATIONS = ("auto", "uniform", "global")
CHANNELS = ("auto", "internal", "all")
TARGETS = ("params", "macs")
# Bisection stops when the budget is met this closely (fraction of the original count) ...
SOLVE_TOLERANCE = 0.004
# ... and a budget missed by more than this (the promised +-1 point) is an error.
BUDGET_TOLERANCE = 0.01
# Layer scales, class tokens, position embeddings: torch-pruning warns that it prunes their
# last dimension, which is the channel dimension in every model we build.
warnings.filterwarnings("ignore", message="Unwrapped parameters detected", module="torch_pruning")


class PruningError(Compress1imgError):
    """torch-pruning could not prune this model (named layer) or reach the budget."""


class BudgetError(InputError):
    """The requested sparsity cannot be met with the layout options given."""


@dataclass(frozen=True)
class PruneConfig:
    """What to remove and how to choose it; checked when made."""

    sparsity: float = 0.5  # fraction of the parameters (or MACs, with target="macs") to remove
    target: str = "params"
    mode: str = "structured"
    importance: str = "l2"
    allocation: str = "auto"  # uniform where it meets the budget, else global
    round_to: int | None = None  # None: multiples of 8 where the budget allows, else 4, 2, 1
    channels: str = "auto"  # internal: keep residual streams; all: prune them too; auto: internal if it can
    iterations: int = 1
    ignore: tuple[str, ...] = ()
    drop_blocks: int = 0  # whole residual blocks removed before channels (structured only), chosen on patches
    # Or the blocks to remove, named (an earlier run's report.json "dropped_blocks", a choice of one's own).
    blocks_to_drop: tuple[str, ...] = ()
    # Patches for the least-squares repair after each cut (reconstruction.py); 0: no repair; None:
    # none when healing follows (it ended no better), else 1,024 for inputs up to 64 px, 256 above.
    reconstruct_patches: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "blocks_to_drop", tuple(self.blocks_to_drop))
        require(self, "sparsity", isinstance(self.sparsity, (int, float)) and 0 < self.sparsity < 1,
                f"is the fraction of parameters to remove, strictly between 0 and 1 (got {self.sparsity})")
        for name, allowed in (("target", TARGETS), ("mode", MODES), ("importance", IMPORTANCES),
                              ("allocation", ALLOCATIONS), ("channels", CHANNELS)):
            require_choice(self, name, allowed)
        if self.round_to is not None:
            require_int(self, "round_to", 1)
        require_int(self, "iterations", 1)
        require_int(self, "drop_blocks", 0, f"must be a number of blocks, 0 or more (got {self.drop_blocks})")
        if self.reconstruct_patches is not None:
            require_int(self, "reconstruct_patches", 0, "must be a number of patches, 0 (no repair) or more "
                                                        f"(got {self.reconstruct_patches})")
        require(self, "drop_blocks", not (self.drop_blocks and self.mode == "unstructured"),
                "needs {} structured: unstructured sparsity keeps every layer", "mode")
        require(self, "blocks_to_drop", not (self.blocks_to_drop and self.mode == "unstructured"),
                "needs {} structured: unstructured sparsity keeps every layer", "mode")
        require(self, "blocks_to_drop", not (self.blocks_to_drop and self.drop_blocks),
                "names the blocks that {} would choose: give one or the other", "drop_blocks")
        repeated = sorted({b for b in self.blocks_to_drop if self.blocks_to_drop.count(b) > 1})
        require(self, "blocks_to_drop", not repeated, f"names a block more than once: {', '.join(repeated)}")
        require(self, "target", not (self.mode == "unstructured" and self.target == "macs"),
                "macs needs {} structured: zeroed weights still cost MACs", "mode")

    @property
    def dropping(self) -> int:
        """How many whole blocks go before the channel cut, chosen or named."""
        return len(self.blocks_to_drop) or self.drop_blocks


def _torch_pruning():
    """torch-pruning, imported when first needed: it imports timm and torchvision, seconds of every start."""
    import torch_pruning

    return torch_pruning


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) as torch-pruning counts them."""
    tp = _torch_pruning()
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def budget_count(model: nn.Module, example: torch.Tensor, target: str) -> int:
    """The count a budget is about; parameters without a forward pass, which is the slow part."""
    return count(model, example)[0] if target == "macs" else sum(p.numel() for p in model.parameters())


def protected_layers(model: nn.Module, num_classes: int, extra: tuple[str, ...]) -> list[nn.Module]:
    """The classifier (its outputs are the classes), the stem (first conv) and the named `extra` layers."""
    named = dict(model.named_modules())
    layers = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and not isinstance(m, ShortcutConv)]
    if convs:
        layers.append(convs[0])
    head = classifier_name(model, num_classes)
    if head is not None:
        layers.append(named[head])
    for name in extra:
        if name not in named:
            close = [n for n in named if name in n][:5]
            raise InputError(f"--ignore {name}: no such layer" + (f" (did you mean {', '.join(close)}?)" if close
                                                                     else "; layer names are as in model.named_modules()"))
        layers.append(named[name])
    return layers


def residual_layers(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> list[nn.Module]:
    """Convs and linears whose output channels are added to another branch's: the residual streams.

    Removing a residual channel removes it from every block of the stream at once;
    keeping the streams and pruning only inside blocks did far less damage (ResNet-56,
    50% of parameters: 26% top-1 right after the cut instead of 10%).
    """
    tp = _torch_pruning()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as e:  # DepGraph tracing failures come as assorted exception types
        raise PruningError(f"torch-pruning cannot trace this model: {first_line(e, with_type=True)}") from None
    layers = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        nodes = [dep.target for dep, _ in group]
        if any(node.type == tp.ops.OPTYPE.ELEMENTWISE
               and type(node.grad_fn).__name__.startswith(("AddBackward", "SubBackward")) for node in nodes):
            layers.extend(dep.target.module for dep, _ in group
                          if graph.is_out_channel_pruning_fn(dep.handler)
                          and isinstance(dep.target.module, (nn.Conv2d, nn.Linear)))
    return layers


def _importance(name: str):
    tp = _torch_pruning()
    return {"l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "bn": lambda: tp.importance.BNScaleImportance()}[name]()


def make_pruner(model: nn.Module, example: torch.Tensor, config: PruneConfig, ratio: float,
                ignored: list[nn.Module]) -> tp.pruner.BasePruner:
    """The torch-pruning pruner for one cut of `model` at channel `ratio` in `config`'s layout; `ignored`
    layers keep their channels. `pruner.step()` cuts; `pruner.step(interactive=True)` yields the groups."""
    tp = _torch_pruning()
    # Attention: narrow each head (torch-pruning keeps the heads' channels together), keep their number.
    heads = {m.qkv: m.num_heads for m in attention_layers(model)}
    try:
        return tp.pruner.BasePruner(model, example, importance=_importance(config.importance), pruning_ratio=ratio,
                                    global_pruning=config.allocation == "global", ignored_layers=ignored,
                                    round_to=config.round_to, iterative_steps=1,
                                    num_heads=heads, prune_head_dims=True, prune_num_heads=False)
    except Exception as e:  # DepGraph tracing failures come as assorted exception types
        raise PruningError(f"torch-pruning cannot trace this model: {first_line(e, with_type=True)}") from None


def _structured_step(model: nn.Module, example: torch.Tensor, config: PruneConfig, ratio: float, num_classes: int,
                     loss_fn: Callable[[nn.Module], torch.Tensor] | None) -> None:
    ignored = protected_layers(model, num_classes, config.ignore)
    pruner = make_pruner(model, example, config, ratio, ignored)
    if config.importance == "taylor":
        if loss_fn is None:
            raise InputError("--importance taylor needs a loss to take gradients of")
        model.zero_grad()
        loss_fn(model).backward()
        for parameter in model.parameters():  # frozen ones (shortcut convs) get none; the importance needs all
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
    try:
        pruner.step()
    except Exception as e:
        layer = _failing_layer(e)
        raise PruningError(f"torch-pruning failed{' at layer ' + layer if layer else ''}: "
                           f"{first_line(e, with_type=True)}") from None
    model.zero_grad(set_to_none=True)
    freeze_shortcuts(model)
    sync_attention_dims(model)
    check_forward(model, example)


def check_forward(model: nn.Module, example: torch.Tensor) -> None:
    """Run the pruned model once; if it breaks, name the layer where it did."""
    last: list[tuple[str, nn.Module]] = []
    hooks = [module.register_forward_pre_hook(lambda m, args, name=name: last.append((name, m)))
             for name, module in model.named_modules() if not list(module.children())]
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as e:
        name, module = last[-1] if last else ("?", model)
        raise PruningError(f"pruning broke the model at layer {name} ({type(module).__name__}): "
                           f"{first_line(e)}; torch-pruning cannot follow how the model reshapes its "
                           f"channels there: protect it with --ignore {name}, or use --mode unstructured") from None
    finally:
        for hook in hooks:
            hook.remove()


def _failing_layer(error: Exception) -> str | None:
    text = str(error)
    return text.split("'")[1] if text.count("'") >= 2 else None


@dataclass
class PruneStep:
    """What one cut did: the channel ratio and layout it was made with, and the counts after it."""

    ratio: float
    allocation: str
    round_to: int
    channels: str
    macs: int
    params: int
    layout: PruneConfig | None = None  # the config the cut used (its ignore list holds the kept streams)


def _solve(model: nn.Module, example: torch.Tensor, config: PruneConfig, target: int, num_classes: int,
           loss_fn, current: int) -> tuple[float, int]:
    """Bisect the channel ratio on copies; returns (ratio, count) of the trial closest to `target`."""
    low, high = 0.0, 0.99
    best = (float("inf"), 0.0, current)  # (distance, ratio, count)
    while high - low > 1e-3:
        ratio = (low + high) / 2
        trial = copy.deepcopy(model)
        _structured_step(trial, example, config, ratio, num_classes, loss_fn)
        got = budget_count(trial, example, config.target)
        if abs(got - target) < best[0]:
            best = (abs(got - target), ratio, got)
        if best[0] <= SOLVE_TOLERANCE * current:
            break
        low, high = (ratio, high) if got > target else (low, ratio)
    return best[1], best[2]


def least_within_budget(target: int, reference: int) -> float:
    """The smallest count a model pruned towards `target` may end with: the budget's tolerance is measured
    against the original count, `reference`."""
    return target - BUDGET_TOLERANCE * reference


def prune_to_budget(model: nn.Module, example: torch.Tensor, config: PruneConfig, target: int, num_classes: int,
                    reference: int, loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
                    strict: bool = True) -> PruneStep:
    """Remove channels from `model` (in place) until its params (or MACs) are about `target`.

    Bisects torch-pruning's channel ratio on deep copies, then prunes `model` with the
    ratio whose count is closest. `reference` is the original count the +-1 point
    budget tolerance is measured against; with `strict=False` (an intermediate step of
    iterative pruning) the closest count of the first layout is good enough. Allocation "auto" is uniform unless rounding
    channel counts makes uniform miss the budget, then global (still rounded).
    """
    current = budget_count(model, example, config.target)
    if strict and current < least_within_budget(target, reference):
        raise BudgetError(f"the model has already lost {100 * (1 - current / reference):.1f}% of its "
                          f"{config.target}, more than the {100 * (1 - target / reference):.1f}% asked "
                          f"(fewer --drop-blocks?)")
    if target >= current:
        return PruneStep(0.0, config.allocation, config.round_to or 1, config.channels, *count(model, example))
    misses = []
    names = {module: name for name, module in model.named_modules()}
    # Found once: every trial prunes a copy of the same model.
    streams = tuple(names[m] for m in residual_layers(model, example, protected_layers(model, num_classes,
                                                                                       config.ignore)))
    for round_to, channels, allocation in candidate_layouts(config):
        trial_config = dataclasses.replace(config, allocation=allocation, round_to=round_to, channels=channels,
                                           ignore=config.ignore + (streams if channels == "internal" else ()))
        ratio, got = _solve(model, example, trial_config, target, num_classes, loss_fn, current)
        if abs(got - target) <= BUDGET_TOLERANCE * reference or not strict:
            _structured_step(model, example, trial_config, ratio, num_classes, loss_fn)
            macs, params = count(model, example)
            return PruneStep(ratio, allocation, round_to, channels, macs, params, trial_config)
        misses.append(f"{allocation} allocation of {channels} channels in multiples of {round_to} gets "
                      f"{100 * (1 - got / reference):.1f}%")
    wanted = 100 * (1 - target / reference)
    raise BudgetError(f"cannot remove {wanted:.1f}% of the {config.target} within 1 point: {'; '.join(misses)}. "
                      f"Try another --sparsity, --round-to or --allocation")


def candidate_layouts(config: PruneConfig) -> list[tuple[int, str, str]]:
    """(round_to, channels, allocation) to try in order: multiples of 8 first (ragged counts
    ran ~2x slower in ONNX Runtime), residual streams kept where possible (less damage),
    uniform before global. Coarse settings can miss a budget on narrow models (a
    16-channel layer only has 16 or 8 channels at multiples of 8)."""
    roundings = [config.round_to] if config.round_to is not None else [8, 4, 2, 1]
    channels = ["internal", "all"] if config.channels == "auto" else [config.channels]
    allocations = ["uniform", "global"] if config.allocation == "auto" else [config.allocation]
    return [(r, c, a) for r in roundings for c in channels for a in allocations]


# --- depth -------------------------------------------------------------------------------------------------

def droppable_blocks(model: nn.Module, example: torch.Tensor, ignore: tuple[str, ...] = ()) -> list[str]:
    """Blocks that can be replaced by an identity: members of an nn.Sequential (a ResNet stage, a timm
    stage's blocks) holding at least two convs/linears, whose output has their input's shape.

    Those are residual blocks in the architectures we know; a block without a skip
    connection would pass the shape test too, but dropping it changes the outputs so
    much that `drop_blocks` ranks it last. Blocks holding an `ignore`d layer are kept.
    """
    candidates = {}
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            weighted = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in child.modules())
            if weighted >= 2 and not any(i == name or i.startswith(name + ".") for i in ignore):
                candidates[name] = child
    shapes = {}
    hooks = [block.register_forward_hook(
        lambda m, args, out, name=name: shapes.__setitem__(name, (tuple(args[0].shape), tuple(out.shape))
                                                          if args and isinstance(out, torch.Tensor) else None))
        for name, block in candidates.items()]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return [name for name in candidates if shapes.get(name) and shapes[name][0] == shapes[name][1]]


def check_drop_blocks(model: nn.Module, count: int, example: torch.Tensor, ignore: tuple[str, ...] = ()) -> list[str]:
    """The droppable blocks (`droppable_blocks`); a BudgetError when there are fewer than `count`."""
    candidates = droppable_blocks(model, example, ignore)
    if count > len(candidates):
        raise BudgetError(f"--drop-blocks {count}: this model has only {len(candidates)} blocks that can be "
                          f"dropped (residual blocks whose output has their input's shape)")
    return candidates


def drop_blocks(model: nn.Module, count: int, loss_fn: Callable[[nn.Module], torch.Tensor], example: torch.Tensor,
                ignore: tuple[str, ...] = (), keep_at_least: float | None = None,
                target: str = "params") -> list[dict]:
    """Replace `count` blocks by identities, greedily: each time the one whose removal raises
    `loss_fn` (the distillation loss against the teacher on a patch batch) least.

    With `keep_at_least`, a block whose removal would leave the model fewer parameters (MACs with `target`
    "macs") than that is passed over: the blocks that matter least on some images are the largest ones, and
    a choice past the pruning budget would leave nothing to prune, only an error.
    Returns [{"block": name, "loss": loss after dropping it}] in the order dropped.
    """
    candidates = check_drop_blocks(model, count, example, ignore)
    dropped = []
    model.eval()
    for _ in range(count):
        if not candidates:
            raise BudgetError(f"--drop-blocks {count}: after dropping {len(dropped)}, no block is left to drop "
                              f"(the other candidates were inside blocks already dropped)")
        losses = {}
        for name in candidates:  # each block in turn swapped for an identity, then put back
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            block, parent._modules[child] = parent._modules[child], nn.Identity()
            if keep_at_least is None or budget_count(model, example, target) >= keep_at_least:
                with torch.no_grad():
                    losses[name] = float(loss_fn(model))
            parent._modules[child] = block
        if not losses:
            raise BudgetError(f"--drop-blocks {count}: after dropping {len(dropped)}, each block left would take "
                              f"away more {target} than the budget (--sparsity) allows; ask for fewer --drop-blocks "
                              f"or a higher --sparsity")
        best = min(losses, key=losses.get)
        drop_block(model, best)
        # Blocks inside it went with it: dropping them again would only look free.
        candidates = [c for c in candidates if c != best and not c.startswith(best + ".")]
        dropped.append({"block": best, "loss": losses[best]})
    return dropped


def check_named_blocks(model: nn.Module, names: tuple[str, ...], example: torch.Tensor,
                       ignore: tuple[str, ...] = ()) -> None:
    """An InputError unless every name is a droppable block (`droppable_blocks`) and none lies inside another."""
    candidates = droppable_blocks(model, example, ignore)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise InputError(f"--drop-block {unknown[0]}: not a block that can be dropped (a residual block whose output "
                         f"has its input's shape, holding no --ignore'd layer); this model's: {', '.join(candidates)}")
    nested = [n for n in names if any(n.startswith(other + ".") for other in names)]
    if nested:
        raise InputError(f"--drop-block {nested[0]}: it lies inside another block named, which takes it with it")


def drop_named_blocks(model: nn.Module, names: tuple[str, ...], loss_fn: Callable[[nn.Module], torch.Tensor],
                      example: torch.Tensor, ignore: tuple[str, ...] = (), keep_at_least: float | None = None,
                      target: str = "params") -> list[dict]:
    """Replace the blocks `names` by identities, in order; the rows are `drop_blocks`' (the loss after each).
    A BudgetError when together they leave fewer parameters (MACs) than `keep_at_least`."""
    check_named_blocks(model, names, example, ignore)
    dropped = []
    model.eval()
    for name in names:
        drop_block(model, name)
        with torch.no_grad():
            dropped.append({"block": name, "loss": float(loss_fn(model))})
    if keep_at_least is not None and budget_count(model, example, target) < keep_at_least:
        raise BudgetError(f"--drop-block: the {len(names)} blocks named take away more {target} than the budget "
                          f"(--sparsity) allows; name fewer or smaller blocks, or ask for a higher --sparsity")
    return dropped


# --- unstructured ------------------------------------------------------------------------------------------

def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Conv and linear weights: what unstructured sparsity is measured on (as in the paper)."""
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, ShortcutConv)]


def sparsify(model: nn.Module, fraction: float) -> None:
    """Zero the `fraction` of conv/linear weights smallest in magnitude, over the whole model.

    Masks stay attached (torch.nn.utils.prune), so healing cannot revive pruned weights;
    `fold_masks` makes them permanent.
    """
    fold_masks(model)  # a new global ranking; zeros from earlier steps rank lowest and stay pruned
    weights = prunable_weights(model)
    total = sum(getattr(m, n).numel() for m, n in weights)
    torch_prune.global_unstructured(weights, pruning_method=torch_prune.L1Unstructured,
                                    amount=int(round(fraction * total)))


def fold_masks(model: nn.Module) -> None:
    for module, name in prunable_weights(model):
        if torch_prune.is_pruned(module) and hasattr(module, name + "_mask"):
            torch_prune.remove(module, name)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of conv/linear weights that are exactly zero."""
    weights = [getattr(m, n) for m, n in prunable_weights(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
