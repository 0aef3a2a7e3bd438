"""Augmented patches of one image: the paper's generation pipeline, batched.

The pipeline (Asano & Saeed 2023, from Asano et al. 2020), for S x S patches of an
H x W image, with torchvision's semantics for every step:

1. RandomCrop(int(0.5 * min(H, W)))
2. RandomResizedCrop(R = int(sqrt(2) * S), scale=(0.002, 1), ratio=(3/4, 4/3)), bicubic
3. RandomAffine(degrees=30, shear=30) about the centre, bilinear, fill 0
4. CenterCrop(S)
5. ColorJitter(0.4, 0.4, 0.4, 0.1) with probability 0.5

Steps 1-4 are all affine, so each patch is ONE affine map from its output pixels to
the source image, sampled with a single `grid_sample` call per pyramid level. The
pyramid (repeated 2x box averaging) stands in for the antialiasing of the bicubic
resize: a patch samples the level nearest to its output pixel size.
Colour jitter runs batched with per-patch factors and a per-patch order of the ops.

Every random number comes from a CPU `torch.Generator` seeded with
`mix_seed(seed, index)`, so `PatchGenerator.batch(n, index)` is a pure function (and
the same on any device): resuming a run or giving each rank its own indices needs no state.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .errors import InputError
from .outputs import atomic_write

# Colour-jitter op ids, in torchvision's ColorJitter numbering (its `fn_idx`).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), used by contrast and saturation.
LUMA = (0.2989, 0.587, 0.114)
# Images are turned into float pyramid levels in strips of this many output rows, so
# a huge image never exists in full as float32.
STRIP_ROWS = 256


@dataclass(frozen=True)
class PatchConfig:
    """The patch pipeline's settings; the defaults are the paper's."""
    size: int = 32
    crop_fraction: float = 0.5
    resize_factor: float = math.sqrt(2)
    scale: tuple[float, float] = (0.002, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 30.0
    shear: float = 30.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.5

    def __post_init__(self):
        problems = []
        if self.size < 1:
            problems.append(f"size must be at least 1 (got {self.size})")
        if not 0 < self.crop_fraction <= 1:
            problems.append(f"crop_fraction must be in (0, 1] (got {self.crop_fraction})")
        if int(self.resize_factor * self.size) < self.size:
            problems.append(f"resize_factor must be at least 1 (got {self.resize_factor})")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            problems.append(f"scale must satisfy 0 < min <= max <= 1 (got {self.scale})")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            problems.append(f"ratio must satisfy 0 < min <= max (got {self.ratio})")
        if min(self.degrees, self.shear, self.brightness, self.contrast, self.saturation) < 0:
            problems.append("degrees, shear, brightness, contrast and saturation must not be negative")
        if not 0 <= self.hue <= 0.5:
            problems.append(f"hue must be in [0, 0.5] (got {self.hue})")
        if not 0 <= self.jitter_p <= 1:
            problems.append(f"jitter_p must be in [0, 1] (got {self.jitter_p})")
        if problems:
            raise InputError("patch settings: " + "; ".join(problems))

    @property
    def resized(self) -> int:
        """R: side of the random resized crop, before rotation and the centre crop."""
        return int(self.resize_factor * self.size)


@dataclass(frozen=True)
class PatchParams:
    """The random parameters of n patches: 1-D CPU tensors of length n unless noted."""
    crop_size: int            # step 1: side of the square first crop (the same for all)
    crop_top: torch.Tensor    # int64, step 1 box in the source image
    crop_left: torch.Tensor
    rrc_top: torch.Tensor     # int64, step 2 box, relative to the step 1 crop
    rrc_left: torch.Tensor
    rrc_height: torch.Tensor
    rrc_width: torch.Tensor
    angle: torch.Tensor       # float64 degrees, step 3, in torchvision's affine convention
    shear: torch.Tensor       # float64 degrees, step 3, parallel to x
    jitter_applied: torch.Tensor  # bool, step 5
    brightness: torch.Tensor  # float64 factors, used only where jitter_applied
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    jitter_order: torch.Tensor  # int64 (n, 4): op ids (BRIGHTNESS..HUE) in the order applied

    def __len__(self) -> int:
        return len(self.angle)


def mix_seed(seed: int, index: int, stream: str = "patches") -> int:
    """A 64-bit generator seed for batch `index` of a run seeded `seed`, one per random `stream`.

    The one seed mixer of the package: the patches, the loop's augmentation ("augment"), and with
    several images each image's patch seed ("image") and the choice among them ("image-choice")
    each draw from a stream of their own, so that no two of them replay the same random numbers.
    A hash of all three (blake2b, 64 bits) rather than a linear mix such as seed * 1_000_003 +
    index: with a linear mix, offset seeds (the held-out patches use seed + 1_000_003) could
    replay another run's batches. The patches' key names no stream: it predates the streams, and
    keeping it keeps every run's patches as they were.
    """
    key = f"compress1img/{seed}/{index}" if stream == "patches" else f"compress1img/{stream}/{seed}/{index}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class PatchGenerator:
    """Random augmented patches of one image, generated in batches on `device`."""

    def __init__(self, image: Image.Image | torch.Tensor, config: PatchConfig = PatchConfig(), seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.config = config
        self.seed = seed
        self.device = torch.device(device)
        pixels = _as_chw(image)
        self.height, self.width = pixels.shape[1:]
        self.crop = int(config.crop_fraction * min(self.height, self.width))
        if self.crop < 1:
            raise InputError(f"image of {self.width}x{self.height} is too small for patches: the first crop "
                             f"({config.crop_fraction} of the shorter side) would be empty")
        # Levels span the finest a patch can need (the smallest resized-crop box) to
        # the coarsest (the whole first crop squeezed into R pixels).
        resized = config.resized
        smallest_box = self.crop * math.sqrt(config.scale[0]) - 1  # - 1: the box sides are rounded
        self.first_level = int(_level_for(torch.tensor(smallest_box / resized)))
        self.last_level = max(self.first_level, int(_level_for(torch.tensor(self.crop / resized))))
        self.levels = _pyramid(pixels, self.first_level, self.last_level, self.device)

    @property
    def size(self) -> int:
        return self.config.size

    def batch(self, n: int, index: int) -> torch.Tensor:
        """float32 (n, 3, S, S) in [0, 1] on self.device; a pure function of (seed, index, n):
        batch k is the same whatever was generated before it (this makes resume and per-rank seeding trivial)."""
        return self.render(self.sample_params(n, index))

    def sample_params(self, n: int, index: int) -> PatchParams:
        """The random parameters of batch `index` (what `batch(n, index)` renders)."""
        cfg, c = self.config, self.crop
        g = torch.Generator().manual_seed(mix_seed(self.seed, index))

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.rand(*(shape or (n,)), generator=g, dtype=torch.float64) * (high - low) + low

        def randint(high: torch.Tensor | int) -> torch.Tensor:
            """Per-element uniform integers in [0, high)."""
            return (torch.rand(n, generator=g, dtype=torch.float64) * high).long()

        crop_top = randint(self.height - c + 1)
        crop_left = randint(self.width - c + 1)

        # RandomResizedCrop.get_params: up to 10 tries of (area, log-ratio); the first
        # box that fits wins, else the central fallback.
        area = c * c * uniform(*cfg.scale, n, 10)
        aspect = torch.exp(uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), n, 10))
        w = torch.round(torch.sqrt(area * aspect)).long()
        h = torch.round(torch.sqrt(area / aspect)).long()
        fits = (w > 0) & (w <= c) & (h > 0) & (h <= c)
        first = fits.long().argmax(dim=1, keepdim=True)
        fallback_w, fallback_h = _central_fallback(c, cfg.ratio)
        found = fits.any(dim=1)
        rrc_w = torch.where(found, w.gather(1, first)[:, 0], fallback_w)
        rrc_h = torch.where(found, h.gather(1, first)[:, 0], fallback_h)
        rrc_top = torch.where(found, randint(c - rrc_h + 1), (c - rrc_h) // 2)
        rrc_left = torch.where(found, randint(c - rrc_w + 1), (c - rrc_w) // 2)

        angle = uniform(-cfg.degrees, cfg.degrees)
        shear = uniform(-cfg.shear, cfg.shear)

        applied = torch.rand(n, generator=g) < cfg.jitter_p
        order = torch.rand(n, 4, generator=g).argsort(dim=1)
        return PatchParams(
            crop_size=c, crop_top=crop_top, crop_left=crop_left,
            rrc_top=rrc_top, rrc_left=rrc_left, rrc_height=rrc_h, rrc_width=rrc_w,
            angle=angle, shear=shear, jitter_applied=applied,
            brightness=uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
            contrast=uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
            saturation=uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
            hue=uniform(-cfg.hue, cfg.hue), jitter_order=order)

    def render(self, params: PatchParams) -> torch.Tensor:
        """float32 (n, 3, S, S) patches for given parameters (steps 1-5)."""
        patches = self.warp(params)
        return color_jitter(patches, params, self.config)

    def warp(self, params: PatchParams) -> torch.Tensor:
        """Steps 1-4 (crop, resized crop, rotation + shear, centre crop) as one sampling pass."""
        cfg, dev = self.config, self.device
        n, size, resized = len(params), cfg.size, cfg.resized
        out = torch.zeros(n, 3, size, size, device=dev)
        if n == 0:
            return out

        # Output pixel centres, relative to the centre of the R x R frame: CenterCrop
        # keeps rows/columns from torchvision's int(round((R - S) / 2)) on.
        offset = round((resized - size) / 2.0)
        coords = torch.arange(size, dtype=torch.float32, device=dev) + (0.5 + offset - resized / 2)
        u, v = coords.view(1, 1, size), coords.view(1, size, 1)

        # Inverse of RandomAffine's map, as torchvision's _get_inverse_affine_matrix
        # (angle, shear_x; no translation, scale 1, shear_y 0), about the frame centre.
        rot, sx = torch.deg2rad(params.angle), torch.deg2rad(params.shear)
        a, c = torch.cos(rot), torch.sin(rot)
        b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
        d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
        m = torch.stack([d, -b, -c, a], 1).to(dev, torch.float32).view(n, 4, 1, 1)
        frame_x = m[:, 0] * u + m[:, 1] * v + resized / 2  # (n, S, S): where each output pixel is in the R frame
        frame_y = m[:, 2] * u + m[:, 3] * v + resized / 2

        # RandomAffine's fill: points outside the R x R frame are black. The edge is
        # hard, as PIL (the paper's backend) draws it.
        inside = (frame_x >= 0) & (frame_x < resized) & (frame_y >= 0) & (frame_y < resized)

        # The resized crop maps the R frame onto its box in the source image; each
        # patch samples the pyramid level nearest to its own pixel size.
        box_w, box_h = params.rrc_width.double(), params.rrc_height.double()
        level = _level_for(torch.sqrt(box_w * box_h) / resized).clamp(self.first_level, self.last_level)
        # Source pixel x -> level pixel x / 2^l -> grid_sample's [-1, 1] (align_corners=False).
        heights = torch.tensor([im.shape[-2] for im in self.levels], dtype=torch.float64)
        widths = torch.tensor([im.shape[-1] for im in self.levels], dtype=torch.float64)
        span_x = 2.0 ** level * widths[level - self.first_level]
        span_y = 2.0 ** level * heights[level - self.first_level]
        x0 = (params.crop_left + params.rrc_left).double()
        y0 = (params.crop_top + params.rrc_top).double()
        affine = torch.stack([box_w / resized * 2 / span_x, x0 * 2 / span_x - 1,
                              box_h / resized * 2 / span_y, y0 * 2 / span_y - 1], 1)
        affine = affine.to(dev, torch.float32).view(n, 4, 1, 1)
        grid = torch.stack([frame_x * affine[:, 0] + affine[:, 1], frame_y * affine[:, 2] + affine[:, 3]], dim=3)

        for lvl in level.unique().tolist():
            picked = (level == lvl).nonzero()[:, 0].to(dev)
            k = len(picked)
            # All patches of a level in one call: their grids stacked into one tall grid.
            sampled = F.grid_sample(self.levels[lvl - self.first_level], grid[picked].view(1, k * size, size, 2),
                                    mode="bilinear", padding_mode="border", align_corners=False)
            out[picked] = sampled.view(3, k, size, size).transpose(0, 1)
        return out.mul_(inside.unsqueeze(1))


def color_jitter(patches: torch.Tensor, params: PatchParams, config: PatchConfig = PatchConfig()) -> torch.Tensor:
    """Step 5 on a batch, in place: each patch with `jitter_applied` gets the four ops in its own order.

    The ops are torchvision's tensor ColorJitter ops (v2 functional adjust_*) with a
    factor per patch; each clamps to [0, 1]. An op of strength 0 is skipped, as in torchvision.
    """
    strengths = (config.brightness, config.contrast, config.saturation, config.hue)
    factors = (params.brightness, params.contrast, params.saturation, params.hue)
    ops = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)
    for slot in range(4):
        for op in (BRIGHTNESS, CONTRAST, SATURATION, HUE):
            if strengths[op] == 0:
                continue
            picked = (params.jitter_applied & (params.jitter_order[:, slot] == op)).nonzero()[:, 0]
            if len(picked) == 0:
                continue
            factor = factors[op][picked].to(patches.device, torch.float32).view(-1, 1, 1, 1)
            picked = picked.to(patches.device)
            patches[picked] = ops[op](patches[picked], factor)
    return patches


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor + other * (1.0 - factor)).clamp_(0.0, 1.0)


def _adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness, with a (k, 1, 1, 1) factor per image."""
    return (x * factor).clamp_(0.0, 1.0)


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_contrast: blend with each image's mean grey level."""
    return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def _adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_saturation: blend with the image's greyscale version."""
    return _blend(x, _grayscale(x), factor)


# Per channel (r, g, b): the hue offset n of the closed-form HSV -> RGB formula below.
_HSV_OFFSETS = (5.0, 3.0, 1.0)


def _adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue: shift the hue in HSV space, saturation and value unchanged.

    RGB -> HSV is torchvision's arithmetic step for step; HSV -> RGB uses the closed
    form c = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, which equals
    torchvision's sector table to ~1e-6 and is several times faster than its gather.
    """
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    # Grey pixels (maxc == minc) get s = 0 and h = 0, without dividing by zero.
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - x) / divisor).unbind(dim=1)
    maxc_neq_r = maxc != r
    maxc_eq_g = maxc == g
    hg = (rc + 2.0 - bc) * (maxc_eq_g & maxc_neq_r)
    hr = (bc - gc) * ~maxc_neq_r
    hb = (gc + 4.0 - rc) * (maxc_neq_r & ~maxc_eq_g)
    h = ((hr + hg + hb) * (1.0 / 6.0) + 1.0).fmod_(1.0)
    h = (h + factor[:, 0]).remainder_(1.0)

    offsets = torch.tensor(_HSV_OFFSETS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (offsets + h.unsqueeze(1) * 6).remainder_(6)
    return maxc.unsqueeze(1) - (maxc * s).unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1)


def _level_for(downscale: torch.Tensor) -> torch.Tensor:
    """Pyramid level for patches whose output pixels span `downscale` source pixels.

    The nearest level in log scale: measured against torchvision's antialiased
    bicubic resize on a real photo, it beats the finer level (aliasing) and the
    coarser one (blur); blending two levels gained little for twice the sampling.
    """
    return torch.round(torch.log2(downscale.clamp(min=1.0))).long()


def _central_fallback(crop: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """RandomResizedCrop's box when all 10 tries fail, for a square crop: (w, h)."""
    if 1.0 < min(ratio):
        return crop, round(crop / min(ratio))
    if 1.0 > max(ratio):
        return round(crop * max(ratio)), crop
    return crop, crop


def _as_chw(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8, or float in [0, 1], on the CPU."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
    return image.detach().cpu()


def _pyramid(pixels: torch.Tensor, first: int, last: int, device: torch.device) -> list[torch.Tensor]:
    """Float levels `first`..`last` of a 2x box-filter pyramid, each (1, 3, h, w) on `device`.

    Level `first` is pooled straight from the image in row strips; 2^l x 2^l box
    averages equal l repeated 2x averages, and the lower levels are never kept.
    """
    factor = 2 ** first
    rows = STRIP_ROWS * factor
    strips = []
    for top in range(0, pixels.shape[1] // factor * factor, rows):
        strip = pixels[:, top:top + rows].to(device)
        strip = strip.float().div_(255) if strip.dtype == torch.uint8 else strip.float()
        strips.append(F.avg_pool2d(strip[None], factor) if factor > 1 else strip[None])
    levels = [torch.cat(strips, dim=2)]
    for _ in range(first, last):
        levels.append(F.avg_pool2d(levels[-1], 2))
    return levels


class PatchArray:
    """Pre-generated patches from a .npy (uint8 NHWC), same `batch(n, index)` interface: a seeded permutation
    per epoch, so training can use either source.

    Batch `index` holds positions index*n .. index*n + n - 1 of the endless sequence
    epoch 0, epoch 1, ..., each epoch a permutation of all patches seeded by (seed, epoch).
    """

    def __init__(self, path_or_array: str | Path | np.ndarray, seed: int = 0, device: str | torch.device = "cpu"):
        if isinstance(path_or_array, (str, Path)):
            name = str(path_or_array)
            if not Path(path_or_array).is_file():
                raise InputError(f"patch file not found: {name}")
            try:
                array = np.load(path_or_array, mmap_mode="r")
            except (ValueError, OSError) as e:
                raise InputError(f"cannot read patch file {name}: {e}") from None
        else:
            name, array = "patch array", np.asarray(path_or_array)
        if array.ndim != 4 or array.shape[-1] != 3 or array.shape[1] != array.shape[2] or array.dtype != np.uint8:
            raise InputError(f"{name} must hold uint8 (N, S, S, 3) patches, not {array.dtype} {array.shape}")
        if len(array) == 0:
            raise InputError(f"{name} holds no patches")
        self.array = array
        self.seed = seed
        self.device = torch.device(device)
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def size(self) -> int:
        return self.array.shape[1]

    def __len__(self) -> int:
        return len(self.array)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which epoch `epoch` visits the patches."""
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # batches only ever straddle two epochs
                self._permutations.pop(min(self._permutations))
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._permutations[epoch] = torch.randperm(len(self), generator=g).numpy()
        return self._permutations[epoch]

    def batch(self, n: int, index: int) -> torch.Tensor:
        """float32 (n, 3, S, S) in [0, 1] on self.device: positions index*n .. index*n + n - 1."""
        positions = index * n + np.arange(n, dtype=np.int64)
        epochs, within = np.divmod(positions, len(self))
        picked = np.empty(n, dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            here = epochs == epoch
            picked[here] = self.permutation(epoch)[within[here]]
        patches = torch.from_numpy(np.ascontiguousarray(self.array[picked])).to(self.device)
        return patches.permute(0, 3, 1, 2).float().div_(255).contiguous()


def generate_patches(image: Image.Image | torch.Tensor, count: int, config: PatchConfig = PatchConfig(),
                     seed: int = 0, chunk: int = 1024, progress: bool = True) -> np.ndarray:
    """uint8 (count, S, S, 3) patches: chunk k is `PatchGenerator(image, config, seed).batch(chunk, k)`."""
    generator = PatchGenerator(image, config, seed=seed)
    out = np.empty((count, config.size, config.size, 3), dtype=np.uint8)
    with tqdm(total=count, unit="patch", disable=not progress, desc="patches") as bar:
        for k, start in enumerate(range(0, count, chunk)):
            n = min(chunk, count - start)
            out[start:start + n] = to_uint8(generator.batch(n, k))
            bar.update(n)
    return out


def to_uint8(patches: torch.Tensor) -> np.ndarray:
    """float (n, 3, S, S) in [0, 1] -> uint8 (n, S, S, 3), rounded."""
    return patches.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_patches(array: np.ndarray, path: str | Path) -> None:
    """Write patches as `.npy` at exactly `path`, atomically (a reader never sees half a file)."""
    atomic_write(path, lambda f: np.save(f, array))


def save_preview(patches: torch.Tensor | np.ndarray, path: str | Path, ncol: int = 16,
                 labels: list[str] | None = None, scale: int = 2) -> None:
    """A PNG grid of patches (float NCHW tensors or uint8 NHWC arrays), each `scale`x nearest-upscaled,
    with an optional text label under each; written atomically."""
    array = to_uint8(patches) if isinstance(patches, torch.Tensor) else np.asarray(patches)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or len(array) == 0:
        raise ValueError(f"expected uint8 (N, S, S, 3) patches, got {array.dtype} {array.shape}")
    if labels is not None and len(labels) != len(array):
        raise ValueError(f"got {len(labels)} labels for {len(array)} patches")
    n, cell, gap = len(array), array.shape[1] * scale, 2
    label_height = 12 if labels is not None else 0
    cols = min(ncol, n)
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (gap + cols * (cell + gap), gap + rows * (cell + label_height + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=10) if labels is not None else None
    for i, patch in enumerate(array):
        x = gap + (i % cols) * (cell + gap)
        y = gap + (i // cols) * (cell + label_height + gap)
        canvas.paste(Image.fromarray(patch).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        if labels is not None:
            text = str(labels[i])
            while text and draw.textlength(text, font=font) > cell:  # cut to the cell width
                text = text[:-1]
            draw.text((x, y + cell), text, fill="black", font=font)
    atomic_write(path, lambda f: canvas.save(f, format="PNG"))
