"""On-the-fly augmentation of each training batch, after the patches are made.

An augmentation is called as `augment(x, seed) -> x` on float NCHW patches in [0, 1]; every
random draw comes from `seed`, which the loop derives from (run seed, batch index), so a
resumed run repeats exactly. Only the input is changed: the teacher labels what it is shown.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .patches import mix_seed

Augment = Callable[[torch.Tensor, int], torch.Tensor]
MIXES = ("auto", "cutmix", "cutmix-per-image", "mixup", "none")
# What "auto" (mix, and mix_alpha None) resolves to, by how the source images are used (sources.IMAGE_MODES).
# Patches: the paper's one box per batch, Beta(0.25, 0.25) (its CIFAR code). Small images used whole, where the
# inputs are few: each image its own box and partner, Beta(1, 1): more distinct inputs, which healed more on 100
# images and within the noise of the one box on 1,000 (docs/benchmarks.md, "The pair again" and after).
PATCH_MIXING = ("cutmix", 0.25)
WHOLE_IMAGE_MIXING = ("cutmix-per-image", 1.0)


def mix_batch(x: torch.Tensor, mode: str, lam: float, generator: torch.Generator) -> torch.Tensor:
    """CutMix (one box per batch) or MixUp, with the batch reversed as partner."""
    if mode == "none" or len(x) < 2:
        return x
    partner = x.flip(0)
    if mode == "mixup":
        return lam * x + (1 - lam) * partner
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return mixed


def cutmix_per_image(x: torch.Tensor, shares: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """CutMix drawn per image: image i keeps `shares[i]` of its area and takes a box of its own size and place
    from a partner of its own (a random permutation of the batch), where `mix_batch` cuts one box, at one
    place, from the reversed batch into every image: more distinct inputs from the same images."""
    n, _, h, w = x.shape
    cut = torch.from_numpy(1.0 - shares).float().sqrt()
    half_h, half_w = (h * cut).long() // 2, (w * cut).long() // 2
    cy, cx = torch.randint(h, (n,), generator=generator), torch.randint(w, (n,), generator=generator)
    partner = torch.randperm(n, generator=generator)
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((rows >= (cy - half_h).view(n, 1, 1)) & (rows < (cy + half_h).view(n, 1, 1))
              & (cols >= (cx - half_w).view(n, 1, 1)) & (cols < (cx + half_w).view(n, 1, 1)))
    return torch.where(inside.unsqueeze(1).to(x.device), x[partner.to(x.device)], x)


def flip_and_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to S/8 pixels with zero padding, per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)
    pad = max(h // 8, 1)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def mixing_for_source(config, image_mode: str):
    """`config` (a DistillConfig) with "auto" mixing resolved for a source whose images are used as `image_mode`
    says ("whole", or patches: "patches", "patch file", a caller's own source); what it sets stays."""
    mix, alpha = WHOLE_IMAGE_MIXING if image_mode == "whole" else PATCH_MIXING
    return dataclasses.replace(config, mix=mix if config.mix == "auto" else config.mix,
                               mix_alpha=alpha if config.mix_alpha is None else config.mix_alpha)


def default_augment(config) -> Augment:
    """What a DistillConfig asks for: the released code's flip + pad-crop, then CutMix (one box per batch, or
    one per image) or MixUp with a Beta(mix_alpha, mix_alpha) ratio ("auto" not yet resolved: the patches')."""
    config = mixing_for_source(config, "patches")

    def augment(x: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        if config.flip_and_shift:
            x = flip_and_shift(x, generator)
        if config.mix == "cutmix-per-image":  # streams of its own: the draws benchmarks/ measured it with
            shares = np.random.default_rng(mix_seed(seed, 1, config.mix)).beta(config.mix_alpha, config.mix_alpha,
                                                                                 len(x))
            return cutmix_per_image(x, shares, torch.Generator().manual_seed(mix_seed(seed, 0, config.mix)))
        lam = float(np.random.default_rng(seed).beta(config.mix_alpha, config.mix_alpha))
        return mix_batch(x, config.mix, lam, generator)
    return augment
