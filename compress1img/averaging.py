"""A moving average of the weights of the model being trained (EMA), kept beside it and returned in its place.

Training ends with weights that have followed the last few hundred batches; their average over those steps is
the classic flatter alternative. Healing the ResNet-56 on patches, it was ahead at 1,000 steps only, and a student
trained from scratch lost to it (docs/benchmarks.md, "A moving average of the weights"): an option, off by
default. As timm's ModelEmaV2, the average covers the buffers too (BatchNorm running statistics) and its decay
warms up, min(decay, (1 + step) / (10 + step)), so that the first steps' weights,
far from where training goes, fade fast. It is kept in float32 whatever the model's dtype, and on its device.
A state dict rather than torch's AveragedModel, which deep-copies the module: the model being healed may carry
the loss's forward hooks (mimicry.py) or be an exported int8 graph.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of `model`'s state (parameters and buffers), started from its state now."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"the decay of a moving average is in (0, 1) (got {decay})")
        self.decay = decay
        self.average = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        """The weight the average keeps of itself at optimizer step `step` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in `model`'s state after optimizer step `step`; counters (integer buffers) are copied."""
        decay = self.decay_at(step)
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.average[key].mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                self.average[key].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        """Put the average into `model`, in its own dtypes."""
        state = model.state_dict()
        model.load_state_dict({k: v.to(state[k].dtype) for k, v in self.average.items()})

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """`model` holds the average inside the block and its own weights again after it (to measure the average)."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.average = {k: v.to(self.average[k].device) for k, v in state["average"].items()}
