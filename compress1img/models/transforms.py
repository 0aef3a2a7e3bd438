"""Structural changes to models that must be replayed when a changed model is reloaded.

A pruned model is saved as its architecture name + the transforms applied + a state
dict with the pruned shapes; loading builds the architecture, replays the transforms,
resizes layers to the saved shapes and loads the weights: no pickled code involved.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .cifar_resnet import PadShortcut

OPTION_A_TO_CONV = "option_a_shortcut_to_conv"
DROP_BLOCK = "drop_block:"  # + a block's name: the block was replaced by an identity


class ShortcutConv(nn.Conv2d):
    """A frozen 1x1 strided convolution doing what an option-A (zero-padding) shortcut does.

    torch-pruning cannot see through F.pad, so the channel coupling between a block's
    input and its residual sum would be lost; as a convolution it is tracked, and
    pruning turns it into the matching channel selection.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=False)
        extra = out_channels - in_channels
        with torch.no_grad():
            self.weight.zero_()
            for i in range(in_channels):
                self.weight[extra // 2 + i, i] = 1.0
        self.weight.requires_grad_(False)


def make_prunable(model: nn.Module) -> list[str]:
    """Replace constructs torch-pruning cannot trace by equivalent ones; returns the transforms applied."""
    replaced = False
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, PadShortcut):
                setattr(module, child_name, ShortcutConv(child.in_channels, child.out_channels, child.stride))
                replaced = True
    return [OPTION_A_TO_CONV] if replaced else []


def drop_block(model: nn.Module, name: str) -> str:
    """Replace the block called `name` by an identity (its input passes straight on); returns the transform."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError:
        parent = None
    if parent is None or child not in parent._modules:
        raise InputError(f"cannot drop block {name}: the model has no such module")
    setattr(parent, child, nn.Identity())
    return DROP_BLOCK + name


def apply_transforms(model: nn.Module, transforms: list[str]) -> None:
    """Replay the transforms of `make_prunable` and `drop_block`, in order, on a freshly built model."""
    unknown = [t for t in transforms if t != OPTION_A_TO_CONV and not t.startswith(DROP_BLOCK)]
    if unknown:
        raise InputError(f"unknown model transforms {sorted(unknown)}: made by a newer compress1img?")
    for transform in transforms:
        if transform == OPTION_A_TO_CONV:
            make_prunable(model)
        else:
            drop_block(model, transform[len(DROP_BLOCK):])


def classifier_name(model: nn.Module, num_classes: int) -> str | None:
    """The name of the last layer whose outputs are the classes (a Linear, or a Conv2d head), None if none."""
    heads = [name for name, m in model.named_modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]
    return heads[-1] if heads else None


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """Self-attention modules with a fused qkv projection split into heads (timm's Attention and kin)."""
    return [m for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int) and isinstance(getattr(m, "head_dim", None), int)]


def sync_attention_dims(model: nn.Module) -> None:
    """Make attention modules' head size follow their (pruned) qkv projection.

    torch-pruning narrows every head of qkv alike but cannot know the attribute
    the forward pass reshapes with. The softmax scale keeps its original value:
    the remaining dimensions' dot products are what the trained model computed.
    """
    for module in attention_layers(model):
        module.head_dim = module.qkv.out_features // (3 * module.num_heads)
        if hasattr(module, "attn_dim"):
            module.attn_dim = module.num_heads * module.head_dim


def freeze_shortcuts(model: nn.Module) -> None:
    # torch-pruning replaces pruned parameters with new, trainable ones.
    for module in model.modules():
        if isinstance(module, ShortcutConv):
            module.weight.requires_grad_(False)


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every layer whose saved tensors have other shapes those shapes (values come from load_state_dict)."""
    for name, module in model.named_modules():
        changed = False
        for key, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            saved = state.get(f"{name}.{key}" if name else key)
            if tensor is None or saved is None or saved.shape == tensor.shape:
                continue
            fresh = torch.empty(saved.shape, dtype=tensor.dtype)
            if key in module._parameters:
                module._parameters[key] = nn.Parameter(fresh, requires_grad=tensor.requires_grad)
            else:
                module._buffers[key] = fresh
            changed = True
        if changed:
            _fix_attributes(name, module)
    sync_attention_dims(model)


def _fix_attributes(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = module.weight.shape[0]
        if depthwise:
            module.groups = module.in_channels = module.out_channels
        else:
            module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = module.running_mean.shape[0] if module.running_mean is not None \
            else module.weight.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
    elif not list(module.children()):
        raise InputError(f"cannot rebuild the pruned layer {name} ({type(module).__name__}) from its saved shapes")
