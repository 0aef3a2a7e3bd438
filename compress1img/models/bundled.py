"""The teacher shipped with the package, so that a first run needs no download; by name `bundled:NAME`."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .loading import LoadedModel, load_model

BUNDLED_PREFIX = "bundled:"
BUNDLED_TEACHER = Path(__file__).parent.parent / "assets" / "models" / "cifar10_resnet20_akamaster.th"
BUNDLED_TEACHER_ARCH = "cifar_resnet20"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# name -> (weights file, architecture, classes, description)
BUNDLED_MODELS = {
    "cifar_resnet20": (BUNDLED_TEACHER, BUNDLED_TEACHER_ARCH, CIFAR10_CLASSES,
                       "bundled CIFAR-10 ResNet-20 (akamaster, BSD-2)"),
}


def bundled_model(name: str) -> LoadedModel:
    """A pretrained model shipped with the package, by its name in BUNDLED_MODELS (`bundled:NAME` on the CLI)."""
    if name not in BUNDLED_MODELS:
        known = ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)
        raise InputError(f"no bundled model {name!r}: the bundled models are {known}")
    path, arch, classes, description = BUNDLED_MODELS[name]
    model = load_model(path, arch)
    model.classes, model.source = list(classes), description
    return model


def bundled_teacher() -> LoadedModel:
    """The ResNet-20 CIFAR-10 teacher shipped with the package (BSD-2, akamaster)."""
    return bundled_model(BUNDLED_TEACHER_ARCH)
