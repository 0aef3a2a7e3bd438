"""Pilot: which residual blocks to drop, by how well the model recovers without them (PRACTISE's recoverability).

    python benchmarks/pilots/block_recoverability.py [--source IMAGE] [--steps 40] [--batch-size 64] \
        [--holdout 256] [--choose 6 12] [--name NAME]

`--drop-blocks N` drops, greedily, the blocks whose removal raises the distillation loss on one batch of patches
least (pruning.drop_blocks): the damage right after the cut. "Practical Network Acceleration with Tiny Sets"
(Wang et al., CVPR 2023) ranks blocks instead by what is left after a short recovery on the few samples at hand.
For each droppable block of the real ResNet-56, a copy of the teacher with that block alone replaced by an
identity is healed `--steps` steps on the teacher's last feature map (the package's loop, `match=features`, the
patches' mixing; every candidate the same patches, batches and seeds), and the relative error of that map on the
held-out patches is measured before and after. Printed: the table, and for each count in `--choose` the blocks to
drop by either ranking (the smallest error first, passing over a block that would take the model past half of its
parameters, as `prune --sparsity 0.5` does). The rows go to benchmarks/results/recoverability/NAME.json; the
blocks to benchmarks/real_image_ceiling.py's `--drop-list`.
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from compress1img import DistillConfig, RunConfig
from compress1img.evaluate import normalize
from compress1img.models import load_model
from compress1img.models.transforms import drop_block
from compress1img.pruning import budget_count, droppable_blocks, least_within_budget
from compress1img.sources import open_source
from compress1img.training import run_distillation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py
from paths import ANIMALS, R56  # noqa: E402

RESULTS = Path("benchmarks/results/recoverability")


@torch.no_grad()
def map_error(teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor, mean, std) -> float:
    """Mean squared error between the two models' `layer3` outputs over the teacher's mean energy (the healing
    loss of `match=features`), on `x` in chunks."""
    maps = {}
    handles = [model.layer3.register_forward_hook(lambda m, i, out, role=role: maps.__setitem__(role, out))
               for role, model in (("teacher", teacher), ("student", student))]
    error = energy = 0.0
    try:
        teacher.eval(), student.eval()
        for chunk in normalize(x, mean, std).split(256):
            teacher(chunk), student(chunk)
            error += float(((maps["student"] - maps["teacher"]) ** 2).sum())
            energy += float((maps["teacher"] ** 2).sum())
    finally:
        for handle in handles:
            handle.remove()
    return error / energy


def choose(rows: list[dict], key: str, count: int, params: dict[str, int], total: int, keep_at_least: int) -> list:
    """The `count` blocks with the smallest `key`, each passed over if it would leave fewer than `keep_at_least`
    parameters."""
    chosen, left = [], total
    for row in sorted(rows, key=lambda r: r[key]):
        if len(chosen) < count and left - params[row["block"]] >= keep_at_least:
            chosen.append(row["block"])
            left -= params[row["block"]]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ANIMALS), help="what `prune --image` takes (default: Animals)")
    parser.add_argument("--steps", type=int, default=40, help="healing steps per candidate")
    parser.add_argument("--batch-size", type=int, default=64, help="patches per healing step")
    parser.add_argument("--choose", type=int, nargs="+", default=[6, 12], help="numbers of blocks to choose")
    parser.add_argument("--holdout", type=int, default=256, help="held-out patches the error is measured on")
    parser.add_argument("--name", default="animals", help="name of the record in benchmarks/results/recoverability/")
    args = parser.parse_args()

    teacher = load_model(R56, "cifar_resnet56")
    teacher.module.eval().requires_grad_(False)
    example = torch.zeros(1, *teacher.input_size)
    source = open_source(args.source, 32, 0, args.holdout)
    heal = DistillConfig(steps=args.steps, batch_size=args.batch_size, match="features", mix="cutmix", mix_alpha=0.25)
    run = RunConfig(progress=False, eval_every=args.steps)
    total = budget_count(teacher.module, example, "params")
    rows = []
    started = time.time()
    for block in droppable_blocks(teacher.module, example):
        student = copy.deepcopy(teacher.module).requires_grad_(True)
        drop_block(student, block)
        before = map_error(teacher.module, student, source.holdout, teacher.mean, teacher.std)
        result = run_distillation(teacher.module, student, source.train, heal, run, mean=teacher.mean,
                                  std=teacher.std, holdout=source.holdout)
        after = map_error(teacher.module, student, source.holdout, teacher.mean, teacher.std)
        rows.append({"block": block, "params": total - budget_count(student, example, "params"),
                     "error_after_drop": before, "error_recovered": after,
                     "holdout_agreement": result.holdout_agreement})
        print(json.dumps(rows[-1]), flush=True)
    params = {row["block"]: row["params"] for row in rows}
    keep_at_least = least_within_budget(int(round(total * 0.5)), total)
    choices = {str(k): {"after_drop": choose(rows, "error_after_drop", k, params, total, keep_at_least),
                        "recovered": choose(rows, "error_recovered", k, params, total, keep_at_least)}
               for k in args.choose}
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"source": args.source, "steps": args.steps, "batch_size": args.batch_size, "rows": rows,
              "choices": choices, "minutes": (time.time() - started) / 60}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1))
    print(f"{'block':<12} {'params':>7} {'after drop':>11} {'recovered':>10}")
    for row in sorted(rows, key=lambda r: r["error_recovered"]):
        print(f"{row['block']:<12} {row['params']:>7} {row['error_after_drop']:>11.4f} {row['error_recovered']:>10.4f}")
    for k, chosen in choices.items():
        for key, blocks in chosen.items():
            print(f"{k} blocks by {key}: {','.join(blocks)}")


if __name__ == "__main__":
    main()
