"""Which image should a teacher be distilled from? Cheap, label-free predictors, from a few thousand patches.

The paper found that the source image decides the outcome: dense scenes teach well,
sparse images and noise do not. A student can only learn the teacher's function where
the patches probe it, so the predictors look at the patches *through the teacher*:

- classes:    share of the teacher's classes that are the top-1 of at least one patch
- evenness:   entropy of the histogram of top-1 classes over patches, divided by its maximum
              (1: every class equally often; 0: one class only)
- confidence: mean top-1 softmax probability (T = 1)
- diversity:  effective rank of the teacher's penultimate features over the patches (exp of the
              entropy of the normalised singular values), divided by its maximum
- density:    bytes per pixel of the image as a JPEG (quality 75, resized to ~0.25 megapixels)
- edges:      share of pixels with a strong luminance gradient, same resolution

score = (evenness + diversity) / 2, both in [0, 1]. It was fixed before the study in
docs/choosing-an-image.md measured what it predicts; the other columns are shown
because users ask about them (image density cannot enter the score: noise is the densest
"image" of all and teaches least).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .errors import InputError
from .evaluate import normalize
from .images import NOISE_IMAGE, source_picture
from .models import LoadedModel
from .patches import PatchConfig, PatchGenerator, save_preview

PREDICTORS = ("classes", "evenness", "confidence", "diversity", "density", "edges")
# Patches per image: enough for a stable class histogram at 32 px in seconds on a CPU;
# at ImageNet sizes each patch costs ~50x more, so fewer by default.
SMALL_INPUT_PATCHES = 2048
LARGE_INPUT_PATCHES = 512
PREVIEW_PATCHES = 64
# The resolution density and edges are measured at, so that they compare images of any size.
DENSITY_PIXELS = 512 * 512
EDGE_THRESHOLD = 0.1  # gradient magnitude on 0..1 luminance that counts as an edge
BATCH = 128


def default_patch_count(input_size: int) -> int:
    return SMALL_INPUT_PATCHES if input_size <= 64 else LARGE_INPUT_PATCHES


def score_images(images: list[str | Path], teacher: LoadedModel, *, patches: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", preview: str | Path | None = None,
                 progress: bool = True) -> list[dict]:
    """Score each image for distilling `teacher`; one dict per image, in the order given.

    Each dict has `image` (as given), `score` (higher is better) and the predictors of
    `PREDICTORS`. With `preview`, writes a PNG grid of patches labelled with the teacher's
    top-1 class per image (see `preview_paths`).
    """
    if not images:
        raise InputError("give at least one image to score")
    size = teacher.input_size[-1]
    count = patches if patches is not None else default_patch_count(size)
    if count < 2:
        raise InputError(f"--patches must be at least 2 (got {count})")
    device = torch.device(device)
    module = teacher.module.to(device).eval()
    targets = preview_paths(preview, images) if preview is not None else [None] * len(images)
    results = []
    for image, target in tqdm(list(zip(images, targets)), desc="scoring", unit="image", disable=not progress):
        picture = source_picture(image, size, seed)
        generator = PatchGenerator(picture, PatchConfig(size=size), seed=seed, device=device)
        logits, features = _teacher_view(module, generator, count, teacher.mean, teacher.std, device)
        row = {"image": str(image), "patches": count,
               **class_predictors(logits, teacher.num_classes), "diversity": effective_rank(features),
               **image_density(picture)}
        row["score"] = (row["evenness"] + row["diversity"]) / 2
        results.append(row)
        if target is not None:
            names = teacher.classes or [f"class {i}" for i in range(teacher.num_classes)]
            shown = generator.batch(PREVIEW_PATCHES, 0)
            with torch.inference_mode():
                top1 = module(normalize(shown.to(device), teacher.mean, teacher.std)).argmax(1).tolist()
            save_preview(shown, target, ncol=8, labels=[names[i] for i in top1], scale=max(1, 64 // size))
            row["preview"] = str(target)
    return results


def preview_paths(preview: str | Path, images: list[str | Path]) -> list[Path]:
    """`preview` itself for one image; for several, `preview` with `-<image name>` before the suffix."""
    preview = Path(preview)
    if len(images) == 1:
        return [preview]
    stems = [NOISE_IMAGE if image == NOISE_IMAGE else Path(str(image)).stem for image in images]
    paths = [preview.with_name(f"{preview.stem}-{stem}{preview.suffix or '.png'}") for stem in stems]
    if len(set(paths)) < len(paths):  # two images of the same name in different folders
        paths = [preview.with_name(f"{preview.stem}-{i + 1}-{stem}{preview.suffix or '.png'}")
                 for i, stem in enumerate(stems)]
    return paths


@torch.inference_mode()
def _teacher_view(module: nn.Module, generator: PatchGenerator, count: int, mean, std,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits and penultimate features (the classifier's input) for `count` patches."""
    classifier = _classifier(module)
    captured: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda m, args, out: captured.append(args[0].flatten(1).float().cpu())) \
        if classifier is not None else None
    logits = []
    try:
        for index, start in enumerate(range(0, count, BATCH)):
            x = generator.batch(min(BATCH, count - start), index).to(device)
            logits.append(module(normalize(x, mean, std)).float().cpu())
    finally:
        if hook is not None:
            hook.remove()
    logits = torch.cat(logits)
    # Without a linear classifier to hook (e.g. a traced program), the logits are the features.
    return logits, torch.cat(captured) if captured else logits


def _classifier(module: nn.Module) -> nn.Module | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def class_predictors(logits: torch.Tensor, num_classes: int) -> dict:
    top1 = logits.argmax(1)
    counts = torch.bincount(top1, minlength=num_classes).double()
    p = counts[counts > 0] / counts.sum()
    # With fewer patches than classes, even the best image cannot show them all.
    most = math.log(min(num_classes, len(top1)))
    entropy = max(0.0, float(-(p * p.log()).sum()))  # not -0.0 for a single class
    return {"classes": float((counts > 0).sum()) / num_classes,
            "evenness": entropy / most if most > 0 else 0.0,
            "confidence": float(logits.softmax(1).max(1).values.mean())}


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values of the centred features) / its maximum, in [0, 1]."""
    centred = features.double() - features.double().mean(0)
    singular = torch.linalg.svdvals(centred)
    if singular.sum() <= 0:
        return 0.0
    p = singular / singular.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum())) / min(features.shape)


def image_density(picture: Image.Image | torch.Tensor) -> dict:
    """JPEG bytes per pixel and edge share of the picture at ~DENSITY_PIXELS pixels."""
    if isinstance(picture, torch.Tensor):
        picture = Image.fromarray((picture.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    shrink = math.sqrt(DENSITY_PIXELS / (picture.width * picture.height))
    size = (max(1, round(picture.width * shrink)), max(1, round(picture.height * shrink)))
    resized = picture.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=75)
    gray = np.asarray(resized.convert("L"), dtype=np.float32) / 255
    gy, gx = np.gradient(gray)
    return {"density": buffer.tell() / (size[0] * size[1]),
            "edges": float((np.hypot(gx, gy) > EDGE_THRESHOLD).mean())}
