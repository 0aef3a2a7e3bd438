"""Seconds per healing step of the default 50% cut of the ResNet-56, for settings measured side by side.

    python benchmarks/healing_step_time.py [--steps 12] [--rounds 2] [--student NAME] [SETTING ...]

Each SETTING is a comma-separated list of DistillConfig NAME=VALUE pairs, or `default`; the default list
is `default hardest_of=2 hardest_of=4 match=logits`. The model is cut once (Animals patches), then each
setting heals a fresh copy of it for --steps steps, in interleaved rounds, on one thread, so that the
ratios between settings hold even while other jobs share the cores; the script prints one JSON line of
seconds per step (each round's figure) and the ratio of each setting's median to the first's. `--student NAME`
times a new, randomly initialised student of that architecture (`distill`'s steps) instead of the cut; with
`match=features` it takes a copy of the teacher's classifier as `distill` gives it.
"""
import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

from compress1img import DistillConfig, PruneConfig, RunConfig, prune, run_distillation
from compress1img.api import build_student
from compress1img.evaluate import normalize
from compress1img.mimicry import adopt_classifier
from compress1img.models import load_model
from compress1img.sources import open_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paths import ANIMALS, R56  # noqa: E402
from overrides import parse, with_overrides  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=["default", "hardest_of=2", "hardest_of=4", "match=logits"],
                        help="comma-separated DistillConfig NAME=VALUE pairs, or default")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--student", help="time a new student of this architecture (e.g. cifar_resnet20) instead "
                                          "of the cut")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = {}
    for setting in args.settings:
        options = {} if setting == "default" else parse(setting.split(","))
        configs[setting] = with_overrides(DistillConfig(steps=args.steps, match="features"), options)
        if options:
            parser.error(f"unknown settings: {', '.join(options)}")

    teacher = load_model(R56, "cifar_resnet56")
    source = open_source(str(ANIMALS), 32, 0, 16)
    if args.student:
        torch.manual_seed(0)
        cut = build_student(args.student, teacher)
        if any(config.match == "features" for config in configs.values()):
            adopt_classifier(teacher.module, cut.module, normalize(source.holdout[:2], teacher.mean, teacher.std))
    else:
        cut = prune(teacher, str(ANIMALS), PruneConfig(sparsity=0.5), heal=None, measure_latency=False,
                    run=RunConfig(progress=False)).model
    seconds = {setting: [] for setting in configs}
    for _ in range(args.rounds):
        for setting, config in configs.items():
            result = run_distillation(teacher.module, copy.deepcopy(cut.module), source.train, config,
                                      RunConfig(progress=False, eval_every=10**6), mean=teacher.mean,
                                      std=teacher.std, holdout=source.holdout)
            seconds[setting].append(round(result.seconds / args.steps, 3))
    first = statistics.median(next(iter(seconds.values())))
    print(json.dumps({"seconds_per_step": seconds,
                      "ratio": {s: round(statistics.median(v) / first, 2) for s, v in seconds.items()}}))


if __name__ == "__main__":
    main()
