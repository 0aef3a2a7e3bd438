"""Training images/s in 1 and N processes, and what generating patches costs, in one run.

    # CPU (all cores, split between the processes of each configuration):
    python benchmarks/ddp_throughput.py --image $DATA/images/animals.jpg
    # GPU, the paper's ImageNet setting (random weights: throughput only, no downloads):
    python benchmarks/ddp_throughput.py --teacher tv:resnet18 --student tv:resnet50 --device cuda \
        --image $DATA/images/animals.jpg
    ($DATA: the data folder of benchmarks/paths.py; `source benchmarks/paths.sh` sets it in bash)

Configurations, each run in fresh processes (plain python for one, torchrun for N) and
alternated block by block so that machine noise hits them alike; the fastest block of each
counts:

    one         1 process, --batch-size B, patches generated on the fly (the baseline)
    premade     1 process, B, pre-made patch tensors already on the device
    n_same_per  N processes, B each (global batch N x B)
    n_same_glob N processes, B / N each (global batch B)

Each block trains --warmup + --steps steps with the real training loop (run_distillation:
DDP, AMP and channels_last on CUDA, --compile if asked) and times the last --steps of
them. On CUDA the N-process configurations need N GPUs and are skipped with fewer.
Prints one JSON object: images/s of each configuration, the ratios, and the device name.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from compress1img import (DistillConfig, PatchConfig, PatchGenerator, create_model_from_name, distributed,
                          load_image)
from compress1img.api import min_image_side
from compress1img.training import device_name, resolve_device, run_distillation

RESULT = "RESULT "  # the worker's line that carries its measurement


class TensorPatches:
    """Pre-made patches as one uint8 tensor on the device: what training costs with no patch work at all."""

    def __init__(self, generator: PatchGenerator, count: int, chunk: int = 256):
        self.size = generator.size
        self.pool = torch.cat([generator.batch(min(chunk, count - start), 10**6 + start).mul(255).round().to(
            torch.uint8) for start in range(0, count, chunk)])

    def batch(self, n: int, index: int) -> torch.Tensor:
        rows = (torch.arange(n) + index * n) % len(self.pool)
        return self.pool[rows.to(self.pool.device)].float().div_(255)


class Timed:
    """A patch source that notes when each step asks for its batch (the previous step has finished by then:
    the training loop reads the loss every step)."""

    def __init__(self, source):
        self.source, self.size, self.started = source, source.size, {}

    def batch(self, n: int, index: int) -> torch.Tensor:
        self.started[index // distributed.world_size()] = time.perf_counter()
        return self.source.batch(n, index)


def worker(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads // distributed.world_size()))
    teacher, info = create_model_from_name(args.teacher, pretrained=False)
    student, _ = create_model_from_name(args.student, num_classes=info["num_classes"], pretrained=False)
    size = args.size or info["input_size"][-1]
    image = load_image(args.image, min_side=min_image_side(size))
    generator = PatchGenerator(image, PatchConfig(size=size), seed=0, device=device)
    source = TensorPatches(generator, args.pool) if args.worker == "premade" else generator
    timed = Timed(source)
    steps = args.warmup + args.steps + 1  # the step after the timed ones marks their end
    # Evaluation only after the last step, on 8 patches: outside the timed steps.
    config = DistillConfig(steps=steps, batch_size=args.worker_batch, eval_every=steps, checkpoint_every=10**9,
                           holdout_size=8, device=args.device, compile=args.compile)
    holdout = generator.batch(8, 10**7).cpu()
    run_distillation(teacher, student, timed, config, mean=info["mean"], std=info["std"], holdout=holdout,
                     progress=False)
    seconds = timed.started[steps - 1] - timed.started[args.warmup]
    images = args.steps * args.worker_batch * distributed.world_size()
    if distributed.is_main():
        print(RESULT + json.dumps({"step_s": seconds / args.steps, "images_per_s": images / seconds,
                                   "device_name": device_name(device), "threads": torch.get_num_threads(),
                                   "patch_size": size}), flush=True)


def generator_rate(args: argparse.Namespace) -> float:
    """Patches/s of the generator alone on the device, at the benchmark's batch size."""
    device = resolve_device(args.device)
    _, info = create_model_from_name(args.teacher, pretrained=False)
    size = args.size or info["input_size"][-1]
    generator = PatchGenerator(load_image(args.image, min_side=min_image_side(size)), PatchConfig(size=size),
                               device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator.batch(args.batch_size, 0)
    sync()
    started = time.perf_counter()
    for i in range(20):
        generator.batch(args.batch_size, i)
    sync()
    return 20 * args.batch_size / (time.perf_counter() - started)


def launch(args: argparse.Namespace, source: str, nproc: int, batch: int) -> dict:
    command = [__file__, "--worker", source, "--worker-batch", str(batch), *sys.argv[1:]]
    if nproc > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // nproc))}
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        sys.exit(f"{source} in {nproc} process(es) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="cifar_resnet56", help="a model name (random weights)")
    parser.add_argument("--student", default="cifar_resnet20")
    parser.add_argument("--size", type=int, help="patch side (default: the teacher's input size)")
    parser.add_argument("--image", default="china")
    parser.add_argument("--batch-size", type=int, default=128, help="B: per process in `one` and `n_same_per`")
    parser.add_argument("--nproc", type=int, default=2, help="N")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first in each block")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--pool", type=int, default=1024, help="pre-made patches (reused cyclically)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the processes")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--worker", choices=("generator", "premade"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)  # for the generator-alone measurement
    if args.batch_size % args.nproc:
        sys.exit(f"--batch-size must be a multiple of --nproc {args.nproc}")

    configs = {"one": ("generator", 1, args.batch_size), "premade": ("premade", 1, args.batch_size),
               "n_same_per": ("generator", args.nproc, args.batch_size),
               "n_same_glob": ("generator", args.nproc, args.batch_size // args.nproc)}
    skipped = {}
    if resolve_device(args.device).type == "cuda" and torch.cuda.device_count() < args.nproc:
        skipped = {name: f"needs {args.nproc} GPUs, {torch.cuda.device_count()} here" for name in configs
                   if configs[name][1] > 1}
    runs: dict[str, list[dict]] = {name: [] for name in configs if name not in skipped}
    for _ in range(args.blocks):
        for name in runs:
            runs[name].append(launch(args, *configs[name]))
    best = {name: min(blocks, key=lambda r: r["step_s"]) for name, blocks in runs.items()}
    images_per_s = {name: round(r["images_per_s"], 1) for name, r in best.items()}
    ratios = {"premade_vs_generator_images_per_s": best["premade"]["images_per_s"] / best["one"]["images_per_s"]}
    for name in ("n_same_per", "n_same_glob"):
        if name in best:
            ratios[f"{name}_vs_one_images_per_s"] = best[name]["images_per_s"] / best["one"]["images_per_s"]
    print(json.dumps({
        "device_name": best["one"]["device_name"], "teacher": args.teacher, "student": args.student,
        "patch_size": best["one"]["patch_size"], "batch_size": args.batch_size, "nproc": args.nproc,
        "threads": {name: r["threads"] for name, r in best.items()}, "compile": args.compile,
        "generator_alone_patches_per_s": round(generator_rate(args)),
        "images_per_s": images_per_s, "ratios": {k: round(v, 3) for k, v in ratios.items()}, "skipped": skipped,
        "all_step_s": {name: [round(r["step_s"], 4) for r in blocks] for name, blocks in runs.items()}}, indent=2))


if __name__ == "__main__":
    main()
