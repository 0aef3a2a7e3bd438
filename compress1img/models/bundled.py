"""The teacher shipped with the package, so that a first run needs no download."""
from __future__ import annotations

from pathlib import Path

from .loading import LoadedModel, load_model

BUNDLED_TEACHER = Path(__file__).parent.parent / "assets" / "models" / "cifar10_resnet20_akamaster.th"
BUNDLED_TEACHER_ARCH = "cifar_resnet20"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def bundled_teacher() -> LoadedModel:
    """The ResNet-20 CIFAR-10 teacher shipped with the package (BSD-2, akamaster)."""
    teacher = load_model(BUNDLED_TEACHER, BUNDLED_TEACHER_ARCH)
    teacher.classes = CIFAR10_CLASSES
    teacher.source = "bundled CIFAR-10 ResNet-20 (akamaster, BSD-2)"
    return teacher
