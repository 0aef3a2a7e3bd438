"""Where the training patches come from: one image, several images, a folder of them, a bundled set of them, a
pre-made `.npy`, or any object with `.size` and `.batch(n, index)` (a patch source of the caller's own).

Every source gives batch `index` of `n` patches as a pure function of (seed, index, n), so
resume and per-rank batches work the same whatever the source. Two ways to use an image:

- "patches": the paper's pipeline (patches.py) cuts augmented crops out of it. One image
  or many: with several, each patch of a batch comes from an image drawn at random.
- "whole": the image itself, resized to the model's input, with only the loop's light
  augmentation (flip, shift, CutMix: by default a box per image, augment.WHOLE_IMAGE_MIXING) on
  top; for sets of small images, about the model's input size, which the paper's crops would
  only blow up.

"auto" uses images whole when they are too small for the paper's first crop (its side is half
the image's shorter side and must hold the resized crop) and cuts patches otherwise.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .augment import flip_and_shift
from .errors import InputError
from .images import (DEFAULT_IMAGE, NOISE_IMAGE, describe_image, expand_sets, load_image, min_image_side,
                     resolve_image, source_picture)
from .patches import PatchArray, PatchConfig, PatchGenerator, mix_seed
from .training import PatchSource

log = logging.getLogger("compress1img")

# The held-out patches come from the same images under a seed training never uses; from a caller's own
# patch source, as a batch beyond any index training reaches.
HOLDOUT_SEED_OFFSET = 1_000_003
HOLDOUT_INDEX = 2**42
IMAGE_MODES = ("auto", "patches", "whole")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm"}

ImageArg = str | Path | Sequence[str | Path] | PatchSource | None


@dataclass
class Source:
    """Training patches, fixed held-out patches (on the CPU, never trained on), and what the report says."""

    train: object  # a PatchSource: .size and .batch(n, index)
    holdout: torch.Tensor
    images: list[str]  # the images used, as resolved paths (or "noise"); empty for a patch file
    mode: str  # "patches", "whole" or "patch file"

    def describe(self) -> dict:
        first = self.images[0] if len(self.images) == 1 else f"{len(self.images)} images" if self.images else None
        report = {"image": first, "images_used": len(self.images), "image_mode": self.mode}
        if len(self.images) > 1:
            report["images"] = self.images
        return report


class MultiImagePatches:
    """The paper's patches from several images: each patch of batch `index` comes from an image drawn
    with a generator seeded by (seed, index) in a stream of its own, then cut by that image's own
    PatchGenerator (whose draws, from the patches' stream, are then independent of the choice)."""

    def __init__(self, generators: list[PatchGenerator], seed: int):
        self.generators, self.seed = generators, seed

    @property
    def size(self) -> int:
        return self.generators[0].size

    def batch(self, n: int, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, index, "image-choice"))
        chosen = torch.randint(len(self.generators), (n,), generator=g)
        out = None
        for i in chosen.unique().tolist():
            where = (chosen == i).nonzero().flatten()
            patches = self.generators[i].batch(len(where), index)
            if out is None:
                out = torch.empty(n, *patches.shape[1:], device=patches.device)
            out[where.to(patches.device)] = patches
        return out


def image_files(images: ImageArg) -> list[str | Path]:
    """The images named: files, bundled names and "noise" as given, folders replaced by their image files
    (sorted, not recursive), bundled sets by their images' files; the default image when none is named.
    Every file is checked to exist."""
    named = [DEFAULT_IMAGE] if images is None else [images] if isinstance(images, (str, Path)) else list(images)
    named = expand_sets(named)
    if not named:
        raise InputError("--image names no image")
    found: list[str | Path] = []
    for image in named:
        if image == NOISE_IMAGE:
            found.append(image)
            continue
        path = resolve_image(image)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not inside:
                raise InputError(f"image folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(inside)
        else:
            found.append(image)
    return found


def open_source(images: ImageArg, patch_size: int, seed: int, holdout_size: int, *,
                device: str | torch.device = "cpu", patch_config: PatchConfig | None = None,
                mode: str = "auto", patches_file: str | Path | None = None) -> Source:
    """The patch source for `images` (see the module docstring), batches generated on `device`."""
    if mode not in IMAGE_MODES:
        raise InputError(f"--image-mode must be one of {', '.join(IMAGE_MODES)} (got {mode!r})")
    if patches_file is not None:
        train, holdout = _patch_file(Path(patches_file), patch_size, seed, holdout_size, device)
        return Source(train, holdout, [], "patch file")
    if hasattr(images, "batch") and hasattr(images, "size"):  # a patch source of the caller's own
        if images.size != patch_size:
            raise InputError(f"the patch source gives {images.size} px patches, the model expects {patch_size} px")
        return Source(images, images.batch(holdout_size, HOLDOUT_INDEX).cpu(), [type(images).__name__], "source")
    files = image_files(images)
    names = [describe_image(f) for f in files]
    config = dataclasses.replace(patch_config or PatchConfig(), size=patch_size)
    if len(files) == 1 and mode != "whole":  # the paper's pipeline, small images upscaled as it cuts them
        pictures = [source_picture(files[0], patch_size, seed)]
    else:
        pictures = [source_picture(f, patch_size, seed) if f == NOISE_IMAGE else load_image(f) for f in files]
        side = min_image_side(patch_size)
        small = [not isinstance(p, torch.Tensor) and min(p.size) < side for p in pictures]
        if mode == "whole" or (mode == "auto" and all(small)):
            return _whole(pictures, names, patch_size, seed, holdout_size, device)
        pictures = _upscaled(pictures, small, side)
    generators = [PatchGenerator(p, config, seed=s, device=device) for p, s in zip(pictures, _seeds(seed, pictures))]
    held_seed = seed + HOLDOUT_SEED_OFFSET
    held = [PatchGenerator(p, config, seed=s, device=device) for p, s in zip(pictures, _seeds(held_seed, pictures))]
    if len(generators) == 1:
        return Source(generators[0], held[0].batch(holdout_size, 0).cpu(), names, "patches")
    return Source(MultiImagePatches(generators, seed), MultiImagePatches(held, seed + HOLDOUT_SEED_OFFSET)
                  .batch(holdout_size, 0).cpu(), names, "patches")


def _seeds(seed: int, pictures: list) -> list[int]:
    """One patch seed per image: the run's own for one image; with several, each its own stream, so that
    no two images are cut with the same crops, angles and jitter in the same batch."""
    return [seed] if len(pictures) == 1 else [mix_seed(seed, i, "image") for i in range(len(pictures))]


def _upscaled(pictures: list, small: list[bool], side: int) -> list:
    """The small pictures upscaled (bicubic) so the paper's first crop fits, with one warning for all."""
    for i, picture in enumerate(pictures):
        if small[i]:
            w, h = picture.size
            factor = side / min(w, h)
            pictures[i] = picture.resize((max(side, round(w * factor)), max(side, round(h * factor))),
                                         Image.Resampling.BICUBIC)
    if any(small):
        log.warning("%d of the %d images are smaller than %d px on a side; upscaled for the patches (blurry): "
                    "--image-mode whole uses small images as they are", sum(small), len(pictures), side)
    return pictures


def _whole(pictures: list, names: list[str], patch_size: int, seed: int, holdout_size: int, device) -> Source:
    if any(isinstance(p, torch.Tensor) for p in pictures):
        raise InputError("--image noise cannot be used whole: it has no size of its own (use --image-mode patches)")
    array = np.stack([_fit(p, patch_size) for p in pictures])
    train = PatchArray(array, seed=seed, device=device)
    # Held out: the same images under another seed's order, flips and shifts (a set this small has no others).
    views = PatchArray(array, seed=seed + HOLDOUT_SEED_OFFSET).batch(holdout_size, 0)
    holdout = flip_and_shift(views, torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET))
    return Source(train, holdout, names, "whole")


def _fit(image: Image.Image, size: int) -> np.ndarray:
    """The image as uint8 (size, size, 3): its central square, resized (bicubic) when it is not `size` already."""
    w, h = image.size
    side = min(w, h)
    if (w, h) != (size, size):
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _patch_file(path: Path, patch_size: int, seed: int, holdout_size: int, device) -> tuple[PatchArray, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"patch file not found: {path}")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read patch file {path}: {e}") from None
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError(f"patch file {path} must hold uint8 (N, S, S, 3) patches, not {array.dtype} {array.shape}")
    if array.shape[1] != patch_size:
        raise InputError(f"patch file {path} has {array.shape[1]} px patches, the teacher expects {patch_size} px")
    if len(array) <= holdout_size:
        raise InputError(f"patch file {path} has {len(array)} patches: need more than the {holdout_size} held out")
    # The last patches are held out and never trained on.
    holdout = torch.from_numpy(np.array(array[-holdout_size:])).permute(0, 3, 1, 2).float() / 255
    return PatchArray(np.asarray(array[:-holdout_size]), seed=seed, device=device), holdout
