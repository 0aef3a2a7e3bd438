"""Pilot: how much a source's healing inputs look like the teacher's training data, at several first-crop sizes.

    python benchmarks/pilots/patch_statistics.py SOURCE [SOURCE ...] [--crop-fractions 0.125,0.25,0.5,0.75,1]
                                                 [--patches 2048]

SOURCE as `real_image_ceiling.py` takes it: `animals`, a bundled name or set (`photos`), a file or a folder, or a
number N of even-half test images. For each source and each fraction of the pipeline's first crop (its side is
that fraction of the image's shorter side before it is shrunk; the paper's 0.5; images used whole have no crop, one
row), `--patches` healing inputs are drawn with seed 0 (before the loop's flip, shift and CutMix) and one JSON line
printed: the median and the 10th and 90th percentiles of their statistics gap in the teacher
(`real_image_ceiling.statistics_gaps`: the distance of each patch's per-channel means and variances from the
BatchNorm running statistics, summed over the layers; smaller is more like the training data), their busyness
(mean absolute difference between neighbouring pixels, both directions, on [0, 1]), and the busyness of the half
with the smaller gap and of the other half (what `real_image_ceiling.py --realistic 2` keeps and drops).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from compress1img import PatchConfig
from compress1img.models import load_model
from compress1img.sources import open_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py and the ceiling script
from paths import R56  # noqa: E402
from real_image_ceiling import source_images, statistics_gaps  # noqa: E402

CHUNK = 256


def busyness(x: torch.Tensor) -> torch.Tensor:
    """Per image: the mean absolute difference between neighbouring pixels, across and down."""
    across = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
    down = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
    return (across + down) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="animals, a bundled name or set, a file or "
                                                                      "folder, or a number of even-half images")
    parser.add_argument("--crop-fractions", default="0.125,0.25,0.5,0.75,1", metavar="F[,F...]",
                        help="first-crop sizes to measure, as fractions of the image's shorter side")
    parser.add_argument("--patches", type=int, default=2048, help="healing inputs drawn per source and size")
    args = parser.parse_args()
    teacher = load_model(R56, "cifar_resnet56")
    for source in args.sources:
        images = source_images(source)
        for fraction in [float(f) for f in args.crop_fractions.split(",")]:
            opened = open_source(images, 32, 0, 1, patch_config=PatchConfig(crop_fraction=fraction))
            whole = opened.mode == "whole"
            inputs = torch.cat([opened.train.batch(min(CHUNK, args.patches - start), start // CHUNK)
                                for start in range(0, args.patches, CHUNK)])
            gaps, busy = statistics_gaps(teacher, inputs), busyness(inputs)
            closer = gaps <= gaps.median()
            print(json.dumps({"source": source, "crop_fraction": None if whole else fraction,
                              "gap_median": round(gaps.median().item(), 1),
                              "gap_p10": round(gaps.quantile(0.1).item(), 1),
                              "gap_p90": round(gaps.quantile(0.9).item(), 1),
                              "busyness": round(busy.mean().item(), 4),
                              "busyness_closer_half": round(busy[closer].mean().item(), 4),
                              "busyness_other_half": round(busy[~closer].mean().item(), 4)}), flush=True)
            if whole:
                break


if __name__ == "__main__":
    main()
