"""Does `score-image` predict which image heals a pruned model best? The study behind docs/choosing-an-image.md.

    python benchmarks/pilots/image_study.py                 # every image: heal (cached), score, table
    python benchmarks/pilots/image_study.py --only heal     # just the healing runs

For each source image, the real ResNet-56 is pruned to 50% of its parameters (the
default structured cut, the same for every image) and healed for the same short
budget on patches of that image; top-1 on the CIFAR-10 test file is what the image
bought. Each healing result is cached in benchmarks/results/image-study/NAME.json,
so an interrupted study continues. Then `score_images` scores every image with the
unpruned teacher, and the script prints both side by side with Spearman's rank
correlation of each predictor with the healed accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from compress1img import DistillConfig, PruneConfig, load_model, prune
from compress1img.data import load_eval_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py
from paths import (ANIMALS, ANIMALS_SMALL, ASTRONAUT, BRIDGE, CHELSEA, CHINA, CIFAR_TEST, CITY, COFFEE,  # noqa: E402
                   HUBBLE, R56)

# Dense to sparse, then noise (the paper's control). The paper's own images (city,
# animals, bridge) carry no licence: read from the data folder only, never copied here.
IMAGES = {
    "animals": ANIMALS,
    "city": CITY,
    "bridge": BRIDGE,
    "hubble": HUBBLE,
    "noise": "noise",
    "china": CHINA,
    "astronaut": ASTRONAUT,
    "coffee": COFFEE,
    "chelsea": CHELSEA,
    "animals_small": ANIMALS_SMALL,
}
OUT = Path("benchmarks/results/image-study")


def heal_rows(names: list[str], steps: int, seed: int) -> dict[str, dict]:
    teacher = load_model(R56, "cifar_resnet56")
    test = load_eval_data(CIFAR_TEST, image_size=32)
    rows = {}
    for name in names:
        path = OUT / f"{name}-s{seed}.json"
        if path.exists():
            rows[name] = json.loads(path.read_text())
            continue
        started = time.perf_counter()
        heal = DistillConfig(steps=steps, batch_size=128, eval_every=steps, checkpoint_every=steps, seed=seed)
        report = prune(teacher, str(IMAGES[name]), config=PruneConfig(sparsity=0.5), heal=heal, eval_data=test,
                       measure_latency=False, progress=False)
        row = {"image": name, "seed": seed, "steps": steps, "batch_size": 128, "teacher_top1": report["teacher_top1"],
               "top1_after_cut": report["per_iteration"][0]["top1_after_cut"],
               "healed_top1": report["final_top1"], "holdout_agreement": report["holdout_agreement"],
               "minutes": (time.perf_counter() - started) / 60}
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=1))
        print(json.dumps(row), flush=True)
        rows[name] = row
    return rows


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties)."""
    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = values.argsort()
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=float)
        for v in np.unique(values):  # ties share their mean rank
            r[values == v] = r[values == v].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:  # a constant predictor ranks nothing
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    parser.add_argument("--steps", type=int, default=400, help="healing steps per image (batch 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["heal", "score"], help="run only one half")
    args = parser.parse_args()

    rows = heal_rows(args.images, args.steps, args.seed) if args.only != "score" else {}
    if args.only == "heal":
        return
    from compress1img.scoring import score_images

    teacher = load_model(R56, "cifar_resnet56")
    scores = score_images([str(IMAGES[name]) for name in args.images], teacher)
    for name, score in zip(args.images, scores):
        rows.setdefault(name, {"image": name})["score"] = score
    (OUT / f"study-s{args.seed}.json").write_text(json.dumps(rows, indent=1))
    healed = [name for name in args.images if "healed_top1" in rows[name]]
    predictors = [key for key, value in scores[0].items() if isinstance(value, float)]
    print(f"{'image':<14} {'healed top-1':>12} " + " ".join(f"{p:>16}" for p in predictors))
    for name in sorted(healed, key=lambda n: -rows[n]["healed_top1"]):
        print(f"{name:<14} {rows[name]['healed_top1']:12.2f} "
              + " ".join(f"{rows[name]['score'][p]:16.3f}" for p in predictors))
    if len(healed) >= 3:
        accuracy = [rows[n]["healed_top1"] for n in healed]
        natural = [n for n in healed if n != "noise"]
        print("Spearman rho with healed top-1 (all images; pictures only, without noise):")
        for p in predictors:
            print(f"  {p:<20} {spearman([rows[n]['score'][p] for n in healed], accuracy):+.2f}   "
                  f"{spearman([rows[n]['score'][p] for n in natural], [rows[n]['healed_top1'] for n in natural]):+.2f}")
        # How often a random ranking correlates at least this well: a one-sided permutation p-value.
        scores = [rows[n]["score"]["score"] for n in healed]
        rho = spearman(scores, accuracy)
        rng = np.random.default_rng(0)
        trials = 20_000
        beaten = sum(spearman(scores, list(rng.permutation(accuracy))) >= rho for _ in range(trials))
        print(f"score: rho {rho:+.2f} over {len(healed)} images, permutation p = {(beaten + 1) / (trials + 1):.4f}")


if __name__ == "__main__":
    main()
