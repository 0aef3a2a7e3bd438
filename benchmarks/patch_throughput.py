"""Patch generation throughput: patches/s of `PatchGenerator.batch` at S=32 and S=224.

    python3 benchmarks/patch_throughput.py [--threads 1] [--batch 256] [--image china] [--device cpu]

Tensor code collapses when threads are oversubscribed: run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import time

import torch

from compress1img.images import DEFAULT_IMAGE, load_image
from compress1img.patches import PatchConfig, PatchGenerator


def patches_per_second(generator: PatchGenerator, batch: int, seconds: float) -> float:
    def sync():
        if generator.device.type == "cuda":
            torch.cuda.synchronize()

    generator.batch(batch, 0)  # warm-up: allocator, kernels
    sync()
    start, index = time.perf_counter(), 1
    while True:
        generator.batch(batch, index)
        index += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and index > 3:
            return (index - 1) * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0, help="time spent per patch size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    image = load_image(args.image)
    print(f"image {args.image} {image.width}x{image.height}, batch {args.batch}, {args.threads} thread(s), "
          f"device {args.device}, torch {torch.__version__}")
    for size in args.sizes:
        generator = PatchGenerator(image, PatchConfig(size=size), device=args.device)
        rate = patches_per_second(generator, args.batch, args.seconds)
        print(f"S={size}: {rate:,.0f} patches/s")


if __name__ == "__main__":
    main()
