"""A tiny timm-like registry of compress1img's own architectures (CIFAR ResNets, Wide ResNets)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import InputError

# The akamaster CIFAR ResNets were trained with the ImageNet statistics, so the CIFAR models use them too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Factory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Factory
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, input_size: tuple[int, int, int] = (3, 32, 32),
                   mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                   num_classes: int = 10) -> Callable[[Factory], Factory]:
    """Decorator registering `fn(num_classes) -> nn.Module` under `name`; returns `fn` unchanged."""
    def decorator(fn: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, tuple(input_size), tuple(mean), tuple(std), num_classes)
        return fn
    return decorator


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}: known models are {', '.join(list_models())}") from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised registry model (`num_classes` defaults to the entry's)."""
    entry = get_entry(name)
    return entry.factory(entry.num_classes if num_classes is None else num_classes)
