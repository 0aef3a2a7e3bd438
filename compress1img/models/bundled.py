"""The teacher shipped with the package, so that a first run needs no download; by name `bundled:NAME`.

What is shipped, not how it loads: loading.py loads it (`bundled_model`), and imports this table."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError

BUNDLED_PREFIX = "bundled:"
BUNDLED_TEACHER = Path(__file__).parent.parent / "assets" / "models" / "cifar10_resnet20_akamaster.th"
BUNDLED_TEACHER_ARCH = "cifar_resnet20"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# name -> (weights file, architecture, classes, description)
BUNDLED_MODELS = {
    "cifar_resnet20": (BUNDLED_TEACHER, BUNDLED_TEACHER_ARCH, CIFAR10_CLASSES,
                       "bundled CIFAR-10 ResNet-20 (akamaster, BSD-2)"),
}


def bundled_entry(name: str) -> tuple[Path, str, list[str], str]:
    """(weights file, architecture, classes, description) of the bundled model `name` (loading.bundled_model
    loads it)."""
    if name not in BUNDLED_MODELS:
        known = ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)
        raise InputError(f"no bundled model {name!r}: the bundled models are {known}")
    return BUNDLED_MODELS[name]
