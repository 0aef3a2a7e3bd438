"""Labelled evaluation data: an .npz of uint8 images and labels, or an ImageFolder-style directory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
# Standard ImageNet evaluation: resize the shorter side to size / 0.875 (256 for 224), then centre-crop;
# what a model that records no preprocessing of its own gets (timm and Hugging Face models record theirs).
CROP_FRACTION = 0.875
INTERPOLATION = "bilinear"
_PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


@dataclass
class EvalData:
    images: torch.Tensor   # uint8 (N, H, W, 3)
    labels: torch.Tensor   # int64 (N,)
    classes: list[str] | None
    source: str


def load_eval_data(path: str | Path, image_size: int | None = None, *, limit: int | None = None,
                   stride: int = 1, interpolation: str | None = None, crop_pct: float | None = None) -> EvalData:
    """Load images[::stride][:limit] with their labels; `image_size` is the model's (square) input side.

    A folder's images are resized and cropped by `fit_image` with `interpolation` and `crop_pct`, the
    model's own preprocessing where it records one (LoadedModel.interpolation, .crop_pct).
    """
    path = Path(path)
    if stride < 1 or (limit is not None and limit < 1):
        raise InputError(f"eval data {path}: stride and limit must be at least 1 (got {stride}, {limit})")
    if path.is_dir():
        images, labels, classes, total = _load_folder(path, image_size, limit, stride, interpolation, crop_pct)
    elif not path.exists():
        raise InputError(f"eval data {path} not found")
    elif path.suffix.lower() == ".npz":
        images, labels, classes = _load_npz(path)
        total = len(images)
        images, labels = images[::stride][:limit], labels[::stride][:limit]
    else:
        raise InputError(f"eval data {path} is neither an .npz file nor a folder of class sub-folders")
    height, width = images.shape[1:3]
    if image_size is not None and (height, width) != (image_size, image_size):
        raise InputError(f"eval data {path} has {height}x{width} images, the model expects {image_size}x{image_size}")
    picked = f"{len(images)} of {total} images" + (f", stride {stride}" if stride > 1 else "")
    return EvalData(torch.from_numpy(np.ascontiguousarray(images)),
                    torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)), classes,
                    source=f"{path.name} ({picked})")


def check_num_classes(data: EvalData, num_classes: int) -> None:
    top = int(data.labels.max()) if len(data.labels) else -1
    if top >= num_classes:
        raise InputError(f"eval data {data.source} has labels up to {top} but the model has {num_classes} classes")
    if data.classes is not None and len(data.classes) != num_classes:
        # Label i would be scored as the model's class i although the two lists differ.
        raise InputError(f"eval data {data.source} names {len(data.classes)} classes but the model has "
                         f"{num_classes}")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    try:
        archive = np.load(path, allow_pickle=False)  # pickled object arrays could run code
    except Exception as e:
        raise InputError(f"eval data {path} is not a readable .npz file ({type(e).__name__})") from None
    with archive:
        for key in ("images", "labels"):
            if key not in archive.files:
                raise InputError(f"eval data {path} has no '{key}' array (it has: {', '.join(archive.files)})")
        try:
            images, labels = archive["images"], archive["labels"]
            classes = [str(c) for c in archive["classes"]] if "classes" in archive.files else None
        except ValueError as e:  # object arrays
            raise InputError(f"eval data {path}: {e}") from None
    if images.ndim != 4 or images.shape[3] != 3:
        raise InputError(f"eval data {path}: images must be (N, H, W, 3) RGB, channels last; "
                         f"got shape {images.shape}")
    if images.dtype != np.uint8:
        raise InputError(f"eval data {path}: images must be uint8 (0-255), got {images.dtype}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"eval data {path}: labels must be a 1-D integer array, got {labels.dtype} "
                         f"of shape {labels.shape}")
    if len(labels) != len(images):
        raise InputError(f"eval data {path} has {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise InputError(f"eval data {path} holds no images")
    if labels.min() < 0:
        raise InputError(f"eval data {path} has negative labels ({labels.min()})")
    if classes is not None and labels.max() >= len(classes):
        raise InputError(f"eval data {path} has labels up to {labels.max()} but only {len(classes)} classes")
    return images, labels, classes


def fit_image(img: Image.Image, size: int, interpolation: str | None = None,
              crop_pct: float | None = None) -> np.ndarray:
    """`img` as a size x size uint8 RGB array, the way models are evaluated: the shorter side resized to
    size / crop_pct, then centre-cropped. Without a crop_pct, models under 64 px (CIFAR) get the whole
    picture, squashed if need be, and bigger ones the standard 0.875."""
    if interpolation is not None and interpolation not in _PIL_FILTERS:
        raise InputError(f"unknown interpolation {interpolation!r}: use one of {', '.join(_PIL_FILTERS)}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise InputError(f"crop_pct must be in (0, 1], got {crop_pct}")
    resample = _PIL_FILTERS[interpolation or INTERPOLATION]
    img = img.convert("RGB")
    if crop_pct is None and size < 64:
        return np.asarray(img.resize((size, size), resample))
    short = int(size / (crop_pct or CROP_FRACTION))
    width, height = img.size
    scale = short / min(width, height)
    img = img.resize((max(short, round(width * scale)), max(short, round(height * scale))), resample)
    width, height = img.size
    left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _load_folder(root: Path, image_size: int | None, limit: int | None, stride: int, interpolation: str | None,
                 crop_pct: float | None) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    if image_size is None:
        raise InputError(f"eval data {root} is a folder: its images need the model's input size to be resized")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"eval data {root} has no class sub-folders (expected {root}/CLASS/IMAGE.jpg)")
    files = [(f, label) for label, name in enumerate(classes) for f in sorted((root / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not files:
        raise InputError(f"eval data {root} has no images in its class sub-folders")
    picked = files[::stride][:limit]  # before decoding: a slice of a big folder loads quickly
    images = np.stack([_read_image(f, image_size, interpolation, crop_pct) for f, _ in picked])
    return images, np.array([label for _, label in picked], dtype=np.int64), classes, len(files)


def _read_image(path: Path, size: int, interpolation: str | None, crop_pct: float | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except Exception as e:
        raise InputError(f"cannot read image {path}: {type(e).__name__}") from None
    return fit_image(img, size, interpolation, crop_pct)
