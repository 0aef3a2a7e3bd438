"""Does training wait for patches? Step time with on-the-fly patches vs pre-made tensors, in one run.

    python benchmarks/train_throughput.py --teacher $DATA/weights/cifar10_resnet56_akamaster.th \
        --arch cifar_resnet56 --student cifar_resnet20 --image $DATA/images/animals.jpg
    ($DATA: the data folder of benchmarks/paths.py; `source benchmarks/paths.sh` sets it in bash)

Prints patches/s of the generator alone, then alternates blocks of training steps fed
by the generator and by a pre-generated array (same models, same step code), so that
machine noise hits both alike, and reports the ratio of their step times.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from compress1img import DistillConfig, PatchArray, PatchConfig, PatchGenerator, load_image, load_model
from compress1img.api import build_student, min_image_side
from compress1img.patches import generate_patches
from compress1img.training import run_distillation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--arch")
    parser.add_argument("--student", default="cifar_resnet20")
    parser.add_argument("--image", default="china")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per source, alternating")
    args = parser.parse_args()

    teacher = load_model(args.teacher, args.arch)
    size = teacher.input_size[-1]
    image = load_image(args.image, min_side=min_image_side(size))
    generator = PatchGenerator(image, PatchConfig(size=size), seed=0)

    generator.batch(args.batch_size, 0)
    started = time.perf_counter()
    n_batches = 50
    for i in range(n_batches):
        generator.batch(args.batch_size, i)
    generator_rate = n_batches * args.batch_size / (time.perf_counter() - started)

    premade = PatchArray(generate_patches(image, args.batch_size * args.steps * args.blocks, PatchConfig(size=size),
                                          seed=0, progress=False), seed=0)
    holdout = generator.batch(64, 10**6)
    times = {"on_the_fly": [], "premade": []}
    for block in range(args.blocks):
        for name, source in (("on_the_fly", generator), ("premade", premade)):
            torch.manual_seed(0)
            student = build_student(args.student, teacher).module
            config = DistillConfig(steps=args.steps, batch_size=args.batch_size, eval_every=10**9,
                                   checkpoint_every=10**9, holdout_size=64, device="cpu")
            result = run_distillation(teacher.module, student, source, config, mean=teacher.mean, std=teacher.std,
                                      holdout=holdout, progress=False)
            times[name].append(result.seconds / args.steps)
    step_on_the_fly = min(times["on_the_fly"])
    step_premade = min(times["premade"])
    print(json.dumps({
        "teacher": teacher.source, "student": args.student, "batch_size": args.batch_size, "patch_size": size,
        "torch_threads": torch.get_num_threads(),
        "generator_patches_per_s": round(generator_rate),
        "step_s_on_the_fly": round(step_on_the_fly, 4), "step_s_premade": round(step_premade, 4),
        "ratio_on_the_fly_vs_premade": round(step_on_the_fly / step_premade, 3),
        "train_patches_per_s_on_the_fly": round(args.batch_size / step_on_the_fly),
        "all_step_times": times}, indent=2))


if __name__ == "__main__":
    main()
