"""Procedural source images: pictures drawn by a program, no photograph and no data behind them.

    python benchmarks/pilots/procedural.py dead-leaves FOLDER [--count 16] [--side 512] [--seed 0]
    python benchmarks/pilots/procedural.py spectrum FOLDER [...]

`dead-leaves`: the dead-leaves model (Lee, Mumford and Huang 2001; the "dead leaves, mixed and textured"
family of Baradad et al., "Learning to See by Looking at Noise", NeurIPS 2021): shapes (discs, rectangles,
triangles) dropped one over another at random places, their sizes drawn from a power law (density ~ r^-3, which
gives the 1/f spectrum of natural images and its occlusion edges), each of a random colour and a third of them
with a random grating or noise texture. `spectrum`: coloured noise whose amplitude spectrum falls as 1/f^alpha,
alpha drawn per image in [0.75, 1.5] (natural images: about 1), with a random linear colour mixing (Baradad's
"spectrum + colour").

The folder is what `--image FOLDER` takes (PNG files): the patch pipeline cuts the paper's crops out of them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def power_law_radius(rng: np.random.Generator, low: float, high: float, exponent: float = 3.0) -> float:
    """A radius with density ~ r^-exponent on [low, high] (inverse transform)."""
    a = 1.0 - exponent
    u = rng.random()
    return (low ** a + u * (high ** a - low ** a)) ** (1.0 / a)


def texture(rng: np.random.Generator, side: int, colour: np.ndarray) -> np.ndarray:
    """A side x side RGB texture around `colour`: an oriented grating or smoothed noise, with a second colour."""
    other = rng.integers(0, 256, 3).astype(np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 24)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 6.3))
    else:
        coarse = rng.random((max(2, side // 8), max(2, side // 8))).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC),
                       np.float32) / 255
    return (colour[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]).clip(0, 255)


def dead_leaves(rng: np.random.Generator, side: int, shapes: int = 4000) -> Image.Image:
    canvas = Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8).repeat(side, 0).repeat(side, 1))
    for _ in range(shapes):
        r = power_law_radius(rng, 3.0, side / 4)
        cx, cy = rng.uniform(-r, side + r, 2)
        colour = rng.integers(0, 256, 3).astype(np.float32)
        # Each shape is drawn in its own box (about 2r pixels a side) and pasted there: whole-canvas masks per
        # shape took half a minute per picture.
        box = int(2 * r) + 2
        mask = Image.new("L", (box, box), 0)
        draw = ImageDraw.Draw(mask)
        c = box / 2
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        elif kind == 1:
            w, h = r * rng.uniform(0.5, 1.0), r * rng.uniform(0.5, 1.0)
            draw.rectangle([c - w, c - h, c + w, c + h], fill=255)
        else:
            angles = rng.uniform(0, 2 * np.pi, 3)
            draw.polygon([(c + r * np.cos(a), c + r * np.sin(a)) for a in angles], fill=255)
        if rng.random() < 1 / 3:
            fill = Image.fromarray(texture(rng, box, colour).astype(np.uint8))
        else:
            fill = Image.new("RGB", (box, box), tuple(int(v) for v in colour))
        canvas.paste(fill, (int(cx - c), int(cy - c)), mask)
    return canvas


def spectrum(rng: np.random.Generator, side: int) -> Image.Image:
    alpha = rng.uniform(0.75, 1.5)
    fy, fx = np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij")
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    channels = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random((side, side)))
        x = np.fft.ifft2(phase / f ** alpha).real
        channels.append((x - x.mean()) / (x.std() + 1e-8))
    mixed = np.einsum("ij,jhw->hwi", rng.normal(0, 1, (3, 3)), np.stack(channels))
    mixed = (mixed - mixed.min((0, 1))) / (np.ptp(mixed, (0, 1)) + 1e-8)
    return Image.fromarray((mixed * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["dead-leaves", "spectrum"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        rng = np.random.default_rng([args.seed, i])
        image = dead_leaves(rng, args.side) if args.kind == "dead-leaves" else spectrum(rng, args.side)
        image.save(args.folder / f"{args.kind}-{i:03d}.png")
    print(f"{args.count} {args.kind} images in {args.folder}")


if __name__ == "__main__":
    main()
