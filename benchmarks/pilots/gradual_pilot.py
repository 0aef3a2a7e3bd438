"""Pilot: fade the channels a cut would remove out *while* distilling, then cut (exactly) and heal.

    python benchmarks/pilots/gradual_pilot.py FADE_STEPS HEAL_STEPS [eval_data=PATH] [fade_until=0.8]

The ResNet-56 at 50% of parameters, the default layout (same solver, same L2 ranking as
`compress1img prune`). The channels the cut would remove are found first; their inputs to the
layers that read them are scaled by s, which falls linearly from 1 to 0 over the first
`fade_until` of FADE_STEPS distillation steps on the dense copy; then the cut removes exactly
those channels (the model's outputs do not change) and HEAL_STEPS more steps heal the small model.
Compare with `prune_pilot.py base STEPS` (one cut, then STEPS of healing).
"""
import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp

from compress1img import DistillConfig, PruneConfig, RunConfig, TrainingHook, run_distillation
from compress1img.context import as_model, load_labelled, tracking_accuracy
from compress1img.evaluate import predict, top1
from compress1img.pruning import count, make_prunable, make_pruner, protected_layers, prune_to_budget
from compress1img.sources import open_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py
from paths import ANIMALS, R56  # noqa: E402


class Fade(TrainingHook):
    """The fading factor for step k is 1 - k / (fade_until * fade_steps), never below 0."""

    def __init__(self, scale: torch.Tensor, steps: float):
        self.scale, self.steps = scale, max(1.0, steps)

    def set_for(self, step: int) -> None:
        self.scale.fill_(max(0.0, 1 - step / self.steps))

    def on_start(self, teacher, student):
        self.set_for(1)

    def after_step(self, step, student, loss):
        self.set_for(step + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fade_steps", type=int, help="distillation steps on the dense copy while channels fade")
    parser.add_argument("heal_steps", type=int, help="healing steps after the cut")
    parser.add_argument("options", nargs="*", metavar="NAME=VALUE", help="eval_data=PATH, fade_until=FRACTION")
    args = parser.parse_args()
    options = dict(arg.split("=", 1) for arg in args.options)
    eval_data = options.get("eval_data", "/tmp/slice1k.npz")
    fade_until = float(options.get("fade_until", 0.8))
    started = time.time()

    teacher = as_model(str(R56), "cifar_resnet56")
    heal, run = DistillConfig(steps=max(args.heal_steps, 1)), RunConfig(eval_every=250)
    labelled = load_labelled(eval_data, teacher)
    patches = open_source(str(ANIMALS), 32, run.seed, run.holdout_size)
    source, holdout = patches.train, patches.holdout
    eval_fn = tracking_accuracy(labelled, teacher, torch.device("cpu"))
    student = copy.deepcopy(teacher.module).requires_grad_(True)
    make_prunable(student)
    example = torch.zeros(1, *teacher.input_size)
    reference = count(student, example)[1]

    # The layout the cut will have: solved on a copy exactly as `compress1img prune` solves it.
    step = prune_to_budget(copy.deepcopy(student), example, PruneConfig(sparsity=0.5), int(round(reference * 0.5)),
                           teacher.num_classes, reference=reference)
    ignored = protected_layers(student, teacher.num_classes, step.layout.ignore)
    names = {m: n for n, m in student.named_modules()}
    plan = []  # (root layer name, pruning function, channel indices)
    for group in make_pruner(student, example, step.layout, step.ratio, ignored).step(interactive=True):
        dep, idxs = group[0]
        plan.append((names[dep.target.module], dep.handler, list(idxs)))

    scale = torch.ones(())
    handles = []
    graph = tp.DependencyGraph().build_dependency(student, example_inputs=example)
    for name, handler, idxs in plan:
        group = graph.get_pruning_group(student.get_submodule(name), handler, idxs)
        for dep, channels in group:
            if dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                index = torch.tensor(list(channels))

                def fade(module, inputs, index=index):
                    x = inputs[0].clone()
                    x[:, index] = x[:, index] * scale.to(x.dtype)
                    return (x,) + inputs[1:]
                handles.append(dep.target.module.register_forward_pre_hook(fade))

    history = []
    common = dict(mean=teacher.mean, std=teacher.std, holdout=holdout, eval_fn=eval_fn)
    if args.fade_steps:
        result = run_distillation(teacher.module, student, source, dataclasses.replace(heal, steps=args.fade_steps),
                                  run, hooks=[Fade(scale, fade_until * args.fade_steps)], **common)
        history += result.history
    faded = top1(predict(student, labelled.images, teacher.mean, teacher.std), labelled.labels)
    scale.fill_(0.0)
    for handle in handles:
        handle.remove()
    graph = tp.DependencyGraph().build_dependency(student, example_inputs=example)
    for name, handler, idxs in plan:
        graph.get_pruning_group(student.get_submodule(name), handler, idxs).prune()
    after_cut = top1(predict(student, labelled.images, teacher.mean, teacher.std), labelled.labels)
    macs, params = count(student, example)
    if args.heal_steps:
        result = run_distillation(teacher.module, student, source, heal, dataclasses.replace(run, seed=run.seed + 1),
                                  **common)
        history += result.history
    healed = top1(predict(student, labelled.images, teacher.mean, teacher.std), labelled.labels)
    print(json.dumps({"variant": "gradual", "fade_steps": args.fade_steps, "heal_steps": args.heal_steps,
                      "fade_until": fade_until, "eval_data": eval_data, "params_removed": 1 - params / reference,
                      "top1_faded": faded, "top1_after_cut": after_cut, "top1": healed, "history": history,
                      "minutes": (time.time() - started) / 60}))


if __name__ == "__main__":
    main()
