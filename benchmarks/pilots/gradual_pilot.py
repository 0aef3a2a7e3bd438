"""Pilot: fade the channels a cut would remove out *while* distilling, then cut (exactly) and heal.

Usage: python benchmarks/pilots/gradual_pilot.py FADE_STEPS HEAL_STEPS [eval_data=PATH] [fade_until=0.8]
The ResNet-56 at 50% of parameters, the default layout (same solver, same L2 ranking as
`compress1img prune`). The channels the cut would remove are found first; their inputs to the
layers that read them are scaled by s, which falls linearly from 1 to 0 over the first
`fade_until` of FADE_STEPS distillation steps on the dense copy; then the cut removes exactly
those channels (the model's outputs do not change) and HEAL_STEPS more steps heal the small model.
Compare with `prune_pilot.py base STEPS` (one cut, then STEPS of healing).
"""
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp

from compress1img.api import as_model, load_labelled, patch_source, tracking_accuracy
from compress1img.evaluate import predict, top1
from compress1img.pruning import (PruneConfig, _pruner, count, make_prunable, protected_layers, prune_to_budget,
                                  residual_layers)
from compress1img.training import DistillConfig, run_distillation
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py
from paths import ANIMALS, R56  # noqa: E402

fade_steps, heal_steps = int(sys.argv[1]), int(sys.argv[2])
options = dict(arg.split("=", 1) for arg in sys.argv[3:])
eval_data = options.get("eval_data", "/tmp/slice1k.npz")
fade_until = float(options.get("fade_until", 0.8))
started = time.time()

teacher = as_model(str(R56), "cifar_resnet56", False)
heal = DistillConfig(steps=max(heal_steps, 1), eval_every=250)
labelled = load_labelled(eval_data, teacher)
source, holdout = patch_source(str(ANIMALS), 32, heal.seed, heal.holdout_size,
                               device=torch.device("cpu"))
eval_fn = tracking_accuracy(labelled, teacher, torch.device("cpu"))
student = copy.deepcopy(teacher.module).requires_grad_(True)
make_prunable(student)
example = torch.zeros(1, *teacher.input_size)
config = PruneConfig(sparsity=0.5)
reference = count(student, example)[1]

# The layout the cut will have: solved on a copy exactly as `compress1img prune` solves it.
step = prune_to_budget(copy.deepcopy(student), example, config, int(round(reference * 0.5)), teacher.num_classes,
                       reference=reference)
ignored = protected_layers(student, teacher.num_classes, ())
if step.channels == "internal":
    ignored += residual_layers(student, example, ignored)
layout = dataclasses.replace(config, allocation=step.allocation, round_to=step.round_to, channels=step.channels)
names = {m: n for n, m in student.named_modules()}
plan = []  # (root layer name, pruning function, channel indices)
for group in _pruner(student, example, layout, step.ratio, ignored).step(interactive=True):
    dep, idxs = group[0]
    plan.append((names[dep.target.module], dep.handler, list(idxs)))

scale = torch.ones(())
hooks = []
graph = tp.DependencyGraph().build_dependency(student, example_inputs=example)
for name, handler, idxs in plan:
    group = graph.get_pruning_group(student.get_submodule(name), handler, idxs)
    for dep, channels in group:
        if dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
            index = torch.tensor(list(channels))

            def fade(module, args, index=index):
                x = args[0].clone()
                x[:, index] = x[:, index] * scale.to(x.dtype)
                return (x,) + args[1:]
            hooks.append(dep.target.module.register_forward_pre_hook(fade))

calls = [0]


def advance(module, args):
    if module.training:
        calls[0] += 1
        scale.fill_(max(0.0, 1 - calls[0] / max(1, fade_until * fade_steps)))


hooks.append(student.register_forward_pre_hook(advance))
history = []
if fade_steps:
    result = run_distillation(teacher.module, student, source, dataclasses.replace(heal, steps=fade_steps),
                              mean=teacher.mean, std=teacher.std, holdout=holdout, eval_fn=eval_fn)
    history += result.history
faded = top1(predict(student, labelled.images, teacher.mean, teacher.std), labelled.labels)
scale.fill_(0.0)
for hook in hooks:
    hook.remove()
graph = tp.DependencyGraph().build_dependency(student, example_inputs=example)
for name, handler, idxs in plan:
    graph.get_pruning_group(student.get_submodule(name), handler, idxs).prune()
after_cut = top1(predict(student, labelled.images, teacher.mean, teacher.std), labelled.labels)
macs, params = count(student, example)
if heal_steps:
    result = run_distillation(teacher.module, student, source, dataclasses.replace(heal, seed=heal.seed + 1),
                              mean=teacher.mean, std=teacher.std, holdout=holdout, eval_fn=eval_fn)
    history += result.history
healed = top1(predict(student, labelled.images, teacher.mean, teacher.std), labelled.labels)
print(json.dumps({"variant": "gradual", "fade_steps": fade_steps, "heal_steps": heal_steps, "fade_until": fade_until,
                  "eval_data": eval_data, "params_removed": 1 - params / reference, "top1_faded": faded,
                  "top1_after_cut": after_cut, "top1": healed, "history": history,
                  "minutes": (time.time() - started) / 60}))
