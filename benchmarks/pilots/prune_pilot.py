"""Short pilots of healing variants for the ResNet-56 at 50% of its parameters: what was tried.

    python benchmarks/pilots/prune_pilot.py VARIANT STEPS [NAME=VALUE ...] >> benchmarks/results/prune_pilot.jsonl

VARIANT: base | taylor | iterK (K pruning iterations) | feat (base plus the experiment below).
NAME=VALUE: a field of DistillConfig (the healing: lr=0.0003, temperature=4, freeze_bn_stats=1, ...),
RunConfig (amp=0, seed=1, ...) or PruneConfig (reconstruct_patches=2048, drop_blocks=9, ...), or
feature_weight (for feat, default 1), eval_data (default /tmp/slice1k.npz; the full test file for the
figures on 10,000 images), image (default paths.ANIMALS), patch_scale (the smallest crop's share of the
area, default 0.002 as in the paper). The slice: every 10th image of cifar10_test_jpeg75.npz, written to
/tmp/slice1k.npz (see docs/benchmarks.md).

"feat" is an experiment that is not part of the package: on top of the KL loss it matches the
outputs of every residual block (same name and shape in teacher and pruned student, which keeping
the residual streams guarantees) by MSE normalised by the teacher's energy. It goes in through the
healing's extension points: a `loss_fn` and a `TrainingHook` that captures the block outputs.
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compress1img import DistillConfig, PatchConfig, PruneConfig, RunConfig, TrainingHook, prune
from compress1img.losses import kl_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py
from paths import ANIMALS, R56  # noqa: E402
from overrides import parse, with_overrides  # noqa: E402


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Non-leaf children of Sequential containers: the residual blocks of ResNets."""
    return {f"{parent_name}.{name}" if parent_name else name: child
            for parent_name, parent in model.named_modules() if isinstance(parent, nn.Sequential)
            for name, child in parent.named_children() if list(child.children())}


class BlockOutputs(TrainingHook):
    """Keeps the latest output of every residual block the teacher and the student share, while training."""

    def __init__(self):
        self.features: dict[str, dict] = {"teacher": {}, "student": {}}
        self.handles = []

    def on_start(self, teacher, student):
        teacher_blocks, student_blocks = blocks(teacher), blocks(student)
        for name in teacher_blocks.keys() & student_blocks.keys():
            for role, block in (("teacher", teacher_blocks[name]), ("student", student_blocks[name])):
                self.handles.append(block.register_forward_hook(
                    lambda m, i, o, role=role, name=name: self.features[role].__setitem__(name, o)))

    def on_end(self, student):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def feature_matching_loss(heal: DistillConfig, outputs: BlockOutputs, weight: float):
    kl = kl_loss(heal)

    def loss_fn(student_logits, teacher_logits):
        loss = kl(student_logits, teacher_logits)
        t, s = outputs.features["teacher"], outputs.features["student"]
        terms = [F.mse_loss(s[n], t[n]) / (t[n].pow(2).mean() + 1e-6) for n in t if n in s and s[n].shape == t[n].shape]
        return loss + weight * torch.stack(terms).mean() if terms and student_logits.requires_grad else loss
    return loss_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="base | taylor | iterK | feat")
    parser.add_argument("steps", type=int, help="healing steps")
    parser.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="settings to change (see above)")
    args = parser.parse_args()
    options = parse(args.overrides)
    given = dict(options)
    feature_weight = float(options.pop("feature_weight", 1.0))
    eval_data = options.pop("eval_data", "/tmp/slice1k.npz")
    image = options.pop("image", str(ANIMALS))
    patch_scale = float(options.pop("patch_scale", PatchConfig.scale[0]))
    heal = with_overrides(DistillConfig(steps=args.steps), options)
    run = with_overrides(RunConfig(eval_every=250, progress=False), options)
    config = with_overrides(PruneConfig(sparsity=0.5), options)
    if options:
        parser.error(f"unknown settings: {', '.join(options)}")
    if args.variant == "taylor":
        config = dataclasses.replace(config, importance="taylor")
    elif args.variant.startswith("iter"):
        config = dataclasses.replace(config, iterations=int(args.variant[4:]))
    extensions = {}
    if args.variant == "feat":
        outputs = BlockOutputs()
        extensions = {"loss_fn": feature_matching_loss(heal, outputs, feature_weight), "hooks": [outputs]}

    started = time.time()
    result = prune(str(R56), image, config, heal=heal, run=run, arch="cifar_resnet56", eval_data=eval_data,
                   measure_latency=False, patch_config=PatchConfig(scale=(patch_scale, 1.0)), **extensions)
    print(json.dumps({"variant": args.variant, "feature_weight": feature_weight if args.variant == "feat" else 0.0,
                      "steps": args.steps, "options": {k: v for k, v in given.items()
                                                       if k not in ("eval_data", "image", "patch_scale",
                                                                    "feature_weight")},
                      "eval_data": eval_data, "image": image, "patch_scale": patch_scale,
                      "top1": result.report["pruned_top1"], "per_iteration": result.report["per_iteration"],
                      "minutes": (time.time() - started) / 60}))


if __name__ == "__main__":
    main()
