"""The one place for the data paths of the benchmarks (benchmarks/paths.sh is its twin for the shell scripts).

DATA is $COMPRESS1IMG_DATA when set, else ../shared/data next to the repository root, found from this
file's own location (so a script works from any working directory). Nothing here is shipped with the
package: the paper's images (city, animals, bridge) carry no licence and are read from DATA only.
See DATA/MANIFEST.md for what each file is.

    from paths import ANIMALS, CIFAR_TEST, R56   # in a script of benchmarks/ (its folder is on sys.path)
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root
DATA = Path(os.environ.get("COMPRESS1IMG_DATA", ROOT.parent / "shared" / "data"))

# CIFAR-10 test set (10,000 images that passed through JPEG q75) and its first 20 images, lossless.
CIFAR_TEST = DATA / "cifar10_test_jpeg75.npz"
CIFAR_TEST_LOSSLESS20 = DATA / "cifar10_test_lossless20.npz"

# The real CIFAR-10 ResNets (akamaster, BSD-2-Clause).
WEIGHTS = DATA / "weights"
R20 = WEIGHTS / "cifar10_resnet20_akamaster.th"
R56 = WEIGHTS / "cifar10_resnet56_akamaster.th"

# Source images.
IMAGES = DATA / "images"
ANIMALS = IMAGES / "animals.jpg"  # the paper's "Animals": the benchmarks' source image
ANIMALS_SMALL = IMAGES / "animals_small.png"
CITY = IMAGES / "city.jpg"
BRIDGE = IMAGES / "bridge.png"
HUBBLE = IMAGES / "hubble_deep_field.jpg"
CHINA = IMAGES / "china.jpg"
ASTRONAUT = IMAGES / "astronaut.png"
COFFEE = IMAGES / "coffee.png"
CHELSEA = IMAGES / "chelsea.png"
