"""Finding and loading a source image: any common file, a bundled name, or noise.

`load_image` always returns a fully decoded 8-bit RGB image, or raises `InputError`
with a one-line message: every later stage can then assume plain RGB pixels.
"""
from __future__ import annotations

import logging
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, first_line

log = logging.getLogger("compress1img")

BUNDLED_DIR = Path(__file__).parent / "assets" / "images"
# Licences and sources: assets/images/LICENSES.md.
BUNDLED_IMAGES: dict[str, str] = {
    "china": "china.jpg",
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "hubble": "hubble_deep_field.jpg",
}
# Bundled images used together under one name: patches drawn from all of them. In file-name order, as a folder of
# the same files is read, so that `--image photos` and that folder give the same patches.
BUNDLED_SETS: dict[str, tuple[str, ...]] = {
    "photos": ("astronaut", "chelsea", "china", "coffee"),
}
# What `prune`, `quantize` and `compress` heal on when no image is given: the four together heal a pruned model
# better than china, the best of them alone (docs/choosing-an-image.md, "Several pictures").
DEFAULT_HEALING_IMAGES = "photos"
# What `distill` trains on when no image is given: one picture, the paper's setting.
DEFAULT_IMAGE = "china"
# `--image noise`: uniform random pixels instead of a picture (the paper's control: it teaches almost nothing).
NOISE_IMAGE = "noise"

# Larger images are downscaled while loading: patches are cut from half the shorter
# side and shrunk to ~45 px, so more resolution only costs memory.
MAX_PIXELS = 100_000_000

# Formats we open. Restricting them keeps Pillow away from plugins that shell out
# (EPS runs Ghostscript). "JPEG" also opens MPO, which many phone cameras write.
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")


def resolve_image(path_or_name: str | Path) -> Path:
    """The file behind `path_or_name`: an existing path wins, else a bundled image name."""
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    if str(path_or_name) in BUNDLED_IMAGES:
        return BUNDLED_DIR / BUNDLED_IMAGES[str(path_or_name)]
    if str(path_or_name) in BUNDLED_SETS:
        raise InputError(f"'{path_or_name}' names {len(BUNDLED_SETS[str(path_or_name)])} bundled images "
                         f"({', '.join(BUNDLED_SETS[str(path_or_name)])}); one image is needed here")
    raise InputError(f"image not found: {path_or_name} (not a file, and not one of the bundled images: "
                     f"{', '.join(BUNDLED_IMAGES)}, or sets: {', '.join(BUNDLED_SETS)})")


def expand_sets(images: list) -> list:
    """`images` with each bundled set's name replaced by its images' names (a file or folder of that name wins)."""
    return [member for image in images
            for member in (BUNDLED_SETS[str(image)] if str(image) in BUNDLED_SETS and not Path(image).exists()
                           else (image,))]


def min_image_side(patch_size: int) -> int:
    """Smallest image side for which the first crop (half the side) still covers the resized crop."""
    return 2 * int(math.sqrt(2) * patch_size)


def source_picture(image: str | Path | None, patch_size: int, seed: int = 0) -> Image.Image | torch.Tensor:
    """The picture patches are cut from: `image` loaded big enough for `patch_size` px patches
    (the default image when None), or, for "noise", a (3, H, W) float tensor of uniform noise seeded by `seed`."""
    if image == NOISE_IMAGE:
        side = max(512, min_image_side(patch_size))
        return torch.rand(3, side, side, generator=torch.Generator().manual_seed(seed))
    return load_image(image if image is not None else DEFAULT_IMAGE, min_side=min_image_side(patch_size))


def describe_image(image: str | Path | None) -> str:
    if image == NOISE_IMAGE:
        return "noise (uniform random pixels)"
    return str(resolve_image(image if image is not None else DEFAULT_IMAGE))


def load_image(path_or_name: str | Path, min_side: int = 0) -> Image.Image:
    """Load an image as fully decoded 8-bit RGB, upright (EXIF orientation applied).

    Transparent pixels are composited on white. Images above `MAX_PIXELS` are
    downscaled; images whose shorter side is below `min_side` are upscaled (bicubic).
    Both warn. Anything unreadable raises `InputError`.
    """
    path = resolve_image(path_or_name)
    if path.is_dir():
        raise InputError(f"image {path} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is empty (0 bytes)")
    try:
        # Pillow warns between its two decompression-bomb limits; we downscale those
        # ourselves (with our own warning) and it raises above the upper one.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                image = _decode(im, path)
    except Image.DecompressionBombError as e:
        raise InputError(f"image {path} is too large to decode safely ({e}); downscale it first") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not an image in a supported format "
                         f"(JPEG, PNG, WebP, TIFF, BMP, GIF)") from None
    except MemoryError:
        raise InputError(f"image {path} is too large to decode in memory; downscale it first") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        # Truncated or corrupt files end here (Pillow's LOAD_TRUNCATED_IMAGES is left False).
        raise InputError(f"cannot read image {path}: {first_line(e)}") from None

    w, h = image.size
    if min(w, h) < min_side:
        factor = min_side / min(w, h)
        size = (max(min_side, round(w * factor)), max(min_side, round(h * factor)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        log.warning("image %s is only %dx%d; upscaled to %dx%d - patches will be blurry",
                    path, w, h, *size)
    return image


def _decode(im: Image.Image, path: Path) -> Image.Image:
    """Decode the first frame of an open image into RGB, bounded in size."""
    frames = getattr(im, "n_frames", 1)
    # MPO's extra frames are previews or stereo views of the same photo: not worth a warning.
    if frames > 1 and im.format != "MPO":
        log.warning("image %s has %d frames; using the first", path, frames)
    w, h = im.size
    too_big = w * h > MAX_PIXELS
    if too_big and im.format in ("JPEG", "MPO"):
        # The JPEG decoder can scale by 1/2, 1/4 or 1/8 while decoding: far less memory.
        shrink = math.sqrt(MAX_PIXELS / (w * h))
        im.draft(None, (max(1, int(w * shrink)), max(1, int(h * shrink))))
    im.load()
    image = _to_rgb(ImageOps.exif_transpose(im))
    if image.width * image.height > MAX_PIXELS:
        image = image.reduce(math.ceil(math.sqrt(image.width * image.height / MAX_PIXELS)))
    if too_big:
        log.warning("image %s is %dx%d (%.0f megapixels); downscaled to %dx%d to bound memory",
                    path, w, h, w * h / 1e6, image.width, image.height)
    return image


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode, scaling high-bit-depth values instead of clipping them."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (and 32-bit integer, assumed to hold 16-bit data) grayscale: 0..65535 -> 0..255.
        # (v + 128) // 257 is round(v / 257) = round(v * 255 / 65535) in integers (there are no ties).
        values = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8)).convert("RGB")
    if mode == "F":
        # Float images come as 0..1 or 0..255; anything with values above 1 is taken as 0..255.
        values = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.round(np.clip(values, 0, 255)).astype(np.uint8)).convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or "transparency" in im.info:  # alpha, or a transparent colour key
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        # White, as image viewers show transparency; black would read as shadow.
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")
