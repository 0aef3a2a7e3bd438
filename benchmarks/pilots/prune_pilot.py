"""Short pilots of healing variants for the ResNet-56 at 50% (1,000-image test slice): what was tried.

Usage: python benchmarks/pilots/prune_pilot.py VARIANT STEPS [NAME=VALUE ...] >> benchmarks/results/prune_pilot.jsonl
  VARIANT: base | taylor | iterK (K pruning iterations) | feat (base plus the experiment below)
  NAME=VALUE: a DistillConfig field for the healing (lr=0.0003, temperature=4, freeze_bn_stats=1, ...), a
           PruneConfig field (reconstruct_patches=2048), feature_weight (for feat, default 1), or
           eval_data (default /tmp/slice1k.npz; the full test file for the final figure on 10,000 images),
           image (default paths.ANIMALS: animals.jpg of the data folder), patch_scale (the smallest crop's share of the
           area, default 0.002 as in the paper)
The slice: every 10th image of cifar10_test_jpeg75.npz, written to /tmp/slice1k.npz (see docs/benchmarks.md).

"feat" is an experiment that is not part of the package: on top of the KL loss it matches
the outputs of every residual block (same name and shape in teacher and pruned student,
which keeping the residual streams guarantees) by MSE normalised by the teacher's energy.
"""
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import compress1img.api as api
import compress1img.compression as compression
import compress1img.training as training
from compress1img.patches import PatchConfig
from compress1img.pruning import PruneConfig
from compress1img.training import DistillConfig
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py
from paths import ANIMALS, R56  # noqa: E402

variant, steps = sys.argv[1], int(sys.argv[2])
options = dict(arg.split("=", 1) for arg in sys.argv[3:])
feature_weight = float(options.pop("feature_weight", 1.0))
eval_data = options.pop("eval_data", "/tmp/slice1k.npz")
image = options.pop("image", str(ANIMALS))
patch_scale = float(options.pop("patch_scale", PatchConfig.scale[0]))
# Every PatchConfig the package makes from here on crops at least this share of the area.
api.PatchConfig = functools.partial(PatchConfig, scale=(patch_scale, 1.0))
heal = DistillConfig(steps=steps, eval_every=250)
config = PruneConfig(sparsity=0.5)
for name, value in options.items():
    target = heal if hasattr(heal, name) else config
    kind = type(getattr(target, name)) if getattr(target, name) is not None else int
    setattr(target, name, bool(int(value)) if kind is bool else kind(value))
if variant == "taylor":
    config = dataclasses.replace(config, importance="taylor")
elif variant.startswith("iter"):
    config = dataclasses.replace(config, iterations=int(variant[4:]))


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Non-leaf children of Sequential containers: the residual blocks of ResNets."""
    return {f"{parent_name}.{name}" if parent_name else name: child
            for parent_name, parent in model.named_modules() if isinstance(parent, nn.Sequential)
            for name, child in parent.named_children() if list(child.children())}


if variant == "feat":
    run_distillation, distillation_loss = compression.run_distillation, training.distillation_loss
    features: dict[str, dict] = {"teacher": {}, "student": {}}

    def with_feature_hooks(teacher, student, *args, **kwargs):
        hooks = []
        teacher_blocks, student_blocks = blocks(teacher), blocks(student)
        for name in teacher_blocks.keys() & student_blocks.keys():
            for role, block in (("teacher", teacher_blocks[name]), ("student", student_blocks[name])):
                hooks.append(block.register_forward_hook(
                    lambda m, i, o, role=role, name=name: features[role].__setitem__(name, o)))
        try:
            return run_distillation(teacher, student, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    def with_feature_loss(student_logits, teacher_logits, *args, **kwargs):
        loss = distillation_loss(student_logits, teacher_logits, *args, **kwargs)
        t, s = features["teacher"], features["student"]
        terms = [F.mse_loss(s[n], t[n]) / (t[n].pow(2).mean() + 1e-6) for n in t if n in s and s[n].shape == t[n].shape]
        return loss + feature_weight * torch.stack(terms).mean() if terms and student_logits.requires_grad else loss

    compression.run_distillation, training.distillation_loss = with_feature_hooks, with_feature_loss

started = time.time()
report = compression.prune(str(R56), image,
                           arch="cifar_resnet56", config=config, heal=heal,
                           eval_data=eval_data, progress=False, measure_latency=False)
print(json.dumps({"variant": variant, "feature_weight": feature_weight if variant == "feat" else 0.0, "steps": steps,
                  "options": options, "eval_data": eval_data, "image": image,
                  "patch_scale": patch_scale,
                  "top1": report["pruned_top1"], "per_iteration": report["per_iteration"],
                  "minutes": (time.time() - started) / 60}))
