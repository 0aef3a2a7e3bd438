"""Distillation step time on the CPU: float32 vs channels_last vs bf16 autocast, in one run.

    python benchmarks/amp_step_time.py --teacher $DATA/weights/cifar10_resnet56_akamaster.th \
        --arch cifar_resnet56 --student benchmarks/results/prune-p50/model.pt
    ($DATA: the data folder of benchmarks/paths.py; `source benchmarks/paths.sh` sets it in bash)

One training step as `run_distillation` takes it (teacher forward, student forward and
backward, KL loss, AdamW step) on random inputs, batch 128; the four settings alternate
in blocks (2 warm-up + 8 timed steps each), best block of 3, so that machine noise hits
all alike. Ratios are to plain float32. bf16 only pays on CPUs with native bf16
(AVX512-BF16 or AMX); `autocast_dtype` says whether training will use it here.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from compress1img import load_model
from compress1img.training import autocast_dtype, distillation_loss

SETTINGS = {"float32": (False, False), "channels_last": (True, False), "bf16": (False, True),
            "bf16 + channels_last (what training uses)": (True, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--arch")
    parser.add_argument("--student", required=True, help="a model file (e.g. a pruned model.pt)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    teacher_model = load_model(args.teacher, arch=args.arch)
    teacher = teacher_model.module.eval().requires_grad_(False)
    student = load_model(args.student).module.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, *teacher_model.input_size)

    def step(channels_last: bool, bf16: bool) -> None:
        inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.inference_mode():
                target = teacher(inputs)
            loss = distillation_loss(student(inputs), target, 8.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    best = {name: float("inf") for name in SETTINGS}
    for _ in range(3):
        for name, (channels_last, bf16) in SETTINGS.items():
            layout = torch.channels_last if channels_last else torch.contiguous_format
            teacher.to(memory_format=layout)
            student.to(memory_format=layout)
            for _ in range(2):
                step(channels_last, bf16)
            started = time.perf_counter()
            for _ in range(8):
                step(channels_last, bf16)
            best[name] = min(best[name], (time.perf_counter() - started) / 8)
    print(f"threads: {torch.get_num_threads()}, training uses: {autocast_dtype(torch.device('cpu')) or 'float32'}")
    for name, seconds in best.items():
        print(f"{name:45s} {seconds * 1000:6.0f} ms/step  {best['float32'] / seconds:.2f}x")
    print(json.dumps({name: seconds for name, seconds in best.items()}))


if __name__ == "__main__":
    main()
