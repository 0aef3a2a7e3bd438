"""The batched patch pipeline: shapes, determinism, parameter distributions, fidelity
to torchvision applied step by step, pre-generated patch arrays and the files we write."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import RandomResizedCrop

from compress1img import patches
from compress1img.errors import InputError
from compress1img.images import load_image
from compress1img.patches import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    PatchArray,
    PatchConfig,
    PatchGenerator,
    color_jitter,
    mix_seed,
    generate_patches,
    save_patches,
    save_preview,
    to_uint8,
)

NO_JITTER = PatchConfig(jitter_p=0.0)


def smooth_image(height: int = 300, width: int = 400) -> torch.Tensor:
    """(3, H, W) float in [0, 1]: low-frequency colour waves, nothing to alias."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(2 * math.pi * (1.5 * x + 0.5 * y)),
                        0.5 + 0.4 * torch.cos(2 * math.pi * (0.7 * x - 1.2 * y)),
                        0.5 + 0.4 * torch.sin(2 * math.pi * 2 * x * y)])


def noise_image(height: int = 120, width: int = 160, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def generator() -> PatchGenerator:
    return PatchGenerator(smooth_image(), seed=3)


def test_shape_dtype_range(generator):
    x = generator.batch(64, 0)
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert 0 <= x.min() and x.max() <= 1
    assert generator.size == 32
    small = PatchGenerator(noise_image(), PatchConfig(size=16)).batch(5, 0)
    assert small.shape == (5, 3, 16, 16)
    assert generator.batch(0, 0).shape == (0, 3, 32, 32)


def test_pil_and_tensor_inputs_agree():
    image = noise_image()
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    a = PatchGenerator(image, seed=1).batch(16, 2)
    b = PatchGenerator(as_tensor, seed=1).batch(16, 2)
    assert torch.allclose(a, b, atol=1e-5)


def test_determinism():
    image = noise_image()
    a, b = PatchGenerator(image, seed=7), PatchGenerator(image, seed=7)
    assert torch.equal(a.batch(32, 5), b.batch(32, 5))
    assert not torch.equal(a.batch(32, 5), a.batch(32, 6))
    assert not torch.equal(a.batch(32, 5), PatchGenerator(image, seed=8).batch(32, 5))
    # Batch k does not depend on what was generated before it.
    fresh = PatchGenerator(image, seed=7)
    for k in range(5):
        fresh.batch(32, k)
    torch.manual_seed(123)  # nor on the global RNG
    assert torch.equal(fresh.batch(32, 5), b.batch(32, 5))


def test_each_random_stream_has_its_own_seeds_and_the_patches_keep_theirs():
    assert mix_seed(3, 5) == mix_seed(3, 5, "patches") == 0x534b9d1a91507301  # the patches' seeds as they always were
    streams = {mix_seed(3, 5, s) for s in ("patches", "augment", "image", "image-choice")}
    assert len(streams) == 4 and mix_seed(3, 5, "augment") != mix_seed(3, 6, "augment")


def test_too_small_image_is_an_input_error():
    with pytest.raises(InputError, match="too small"):
        PatchGenerator(Image.new("RGB", (1, 1)))


def test_bad_config_is_an_input_error():
    with pytest.raises(InputError, match="jitter_p"):
        PatchConfig(jitter_p=2.0)


def test_parameters_follow_the_paper():
    image_h, image_w, n = 300, 400, 4000
    gen = PatchGenerator(smooth_image(image_h, image_w))
    p = gen.sample_params(n, 0)
    c = p.crop_size
    assert c == int(0.5 * min(image_h, image_w))

    # Step 1: a c x c crop inside the image, all positions reachable.
    assert p.crop_top.min() >= 0 and (p.crop_top + c).max() <= image_h
    assert p.crop_left.min() >= 0 and (p.crop_left + c).max() <= image_w
    assert p.crop_left.max() > 0.95 * (image_w - c)

    # Step 2: boxes inside the crop; area and aspect in range up to the rounding of the sides.
    w, h = p.rrc_width.double(), p.rrc_height.double()
    assert (p.rrc_top >= 0).all() and (p.rrc_top + p.rrc_height <= c).all()
    assert (p.rrc_left >= 0).all() and (p.rrc_left + p.rrc_width <= c).all()
    assert ((w + 0.5) * (h + 0.5) >= 0.002 * c * c).all()
    assert ((w - 0.5) * (h - 0.5) <= c * c).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    # Same distribution as torchvision's RandomResizedCrop sampler on a c x c image.
    reference = RandomResizedCrop(45, scale=(0.002, 1.0))
    torch.manual_seed(0)
    tv_areas = []
    for _ in range(n):
        params = reference.make_params([torch.empty(3, c, c)])
        tv_areas.append(params["height"] * params["width"] / c**2)
    ours = (w * h / c**2).numpy()
    assert abs(ours.mean() - np.mean(tv_areas)) < 0.03
    assert abs(np.median(ours) - np.median(tv_areas)) < 0.04
    assert ours.min() < 0.01 and ours.max() > 0.9

    # Step 3: angle and shear uniform in +-30 degrees.
    for values in (p.angle, p.shear):
        assert values.abs().max() <= 30 and values.abs().max() > 29
        assert abs(values.mean()) < 1.5 and abs(values.std() - 30 / math.sqrt(3)) < 1.0

    # Step 5: jitter on about half the patches, factors in range, every order equally likely.
    assert abs(p.jitter_applied.float().mean() - 0.5) < 0.03
    for factors, low, high in [(p.brightness, 0.6, 1.4), (p.contrast, 0.6, 1.4), (p.saturation, 0.6, 1.4),
                               (p.hue, -0.1, 0.1)]:
        assert factors.min() >= low and factors.max() <= high
        assert abs(factors.mean() - (low + high) / 2) < 0.02 * (high - low)
    assert (p.jitter_order.sort(dim=1).values == torch.arange(4)).all()
    first_op = torch.bincount(p.jitter_order[:, 0], minlength=4) / n
    assert (abs(first_op - 0.25) < 0.03).all()


def reference_patches(image: torch.Tensor, gen: PatchGenerator, p) -> torch.Tensor:
    """torchvision doing steps 1-4 one at a time, per patch, with our parameters."""
    cfg, out = gen.config, []
    for k in range(len(p)):
        x = TF.resized_crop(image, int(p.crop_top[k] + p.rrc_top[k]), int(p.crop_left[k] + p.rrc_left[k]),
                            int(p.rrc_height[k]), int(p.rrc_width[k]), [cfg.resized, cfg.resized],
                            interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
        x = TF.affine(x, angle=float(p.angle[k]), translate=[0, 0], scale=1.0, shear=[float(p.shear[k]), 0.0],
                      interpolation=InterpolationMode.BILINEAR, fill=0)
        out.append(TF.center_crop(x, [cfg.size, cfg.size]))
    return torch.stack(out)


def test_fidelity_to_torchvision_step_by_step():
    # Measured mean |ours - torchvision| (pixels in [0, 1]): 0.0003 on this smooth image
    # (worst patch 0.0025), 0.0126 on the detailed bundled china.jpg. Not zero because
    # we sample once, bilinearly, from a box-filter pyramid, where torchvision resizes
    # with an antialiased bicubic filter and resamples that bilinearly for the rotation.
    # Single pixels differ by up to ~0.65 along the black frame edge: we cut it hard,
    # as PIL does, torchvision's tensor path blends it over one pixel.
    image = smooth_image()
    gen = PatchGenerator(image, NO_JITTER, seed=11)
    p = gen.sample_params(64, 0)
    difference = (gen.batch(64, 0) - reference_patches(image, gen, p)).abs()
    assert difference.mean() < 0.001
    assert difference.mean(dim=(1, 2, 3)).max() < 0.01  # no patch is off (wrong box, angle or direction)

    photo = load_image("china")
    gen = PatchGenerator(photo, NO_JITTER, seed=11)
    p = gen.sample_params(64, 0)
    reference = reference_patches(TF.to_dtype(TF.to_image(photo), torch.float32, scale=True), gen, p)
    assert (gen.batch(64, 0) - reference).abs().mean() < 0.02


def test_coarse_pyramid_levels_built_in_strips(monkeypatch):
    # Large boxes only (scale >= 0.5) into 11 px: the finest level needed is 1/8 of the
    # image, pooled straight from the pixels in strips (4 rows each here).
    monkeypatch.setattr(patches, "STRIP_ROWS", 4)
    image = smooth_image()
    gen = PatchGenerator(image, PatchConfig(size=8, scale=(0.5, 1.0), jitter_p=0.0), seed=2)
    assert gen.first_level == 3 and gen.levels[0].shape == (1, 3, 300 // 8, 400 // 8)
    expected = F.avg_pool2d(F.avg_pool2d(F.avg_pool2d(image[None], 2), 2), 2)
    assert torch.allclose(gen.levels[0], expected, atol=1e-6)
    # Measured 0.0047: the 8x8 box filter softens even these waves a little more than
    # torchvision's antialiased bicubic does.
    p = gen.sample_params(64, 0)
    assert (gen.batch(64, 0) - reference_patches(image, gen, p)).abs().mean() < 0.01


def test_unscaled_crop_and_quarter_turn_are_exact():
    # A resized-crop box of exactly R x R and a rotation by 90 degrees put every sample
    # on a pixel centre: the result must equal torchvision's exactly (checks offsets).
    image = smooth_image()
    gen = PatchGenerator(image, NO_JITTER)
    resized = gen.config.resized
    p = gen.sample_params(4, 0)
    full = torch.full((4,), resized)
    p = replace(p, rrc_width=full, rrc_height=full, rrc_top=torch.tensor([0, 3, 5, 9]),
                rrc_left=torch.tensor([2, 0, 7, 1]), angle=torch.tensor([0.0, 90.0, -90.0, 180.0], dtype=torch.float64),
                shear=torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(gen.warp(p), reference_patches(image, gen, p), atol=1e-5)


def test_color_jitter_matches_torchvision():
    gen = PatchGenerator(noise_image(), NO_JITTER, seed=5)
    patches = PatchGenerator(smooth_image(), NO_JITTER).batch(48, 0)
    p = gen.sample_params(48, 0)
    applied = torch.arange(48) % 4 != 3
    p = replace(p, jitter_applied=applied)
    ours = color_jitter(patches.clone(), p)
    ops = {BRIGHTNESS: (TF.adjust_brightness, p.brightness), CONTRAST: (TF.adjust_contrast, p.contrast),
           SATURATION: (TF.adjust_saturation, p.saturation), HUE: (TF.adjust_hue, p.hue)}
    for k in range(48):
        x = patches[k]
        if applied[k]:
            for op in p.jitter_order[k].tolist():
                fn, factors = ops[op]
                x = fn(x, float(factors[k]))
        assert torch.allclose(ours[k], x, atol=1e-5), k
    assert torch.equal(ours[~applied], patches[~applied])


def test_hue_on_grey_and_saturated_colours():
    # Greys have no hue (torchvision's special case); pure colours cross sector borders.
    x = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0],
                      [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.9, 0.9]]).view(1, 8, 3).permute(2, 0, 1)
    gen = PatchGenerator(noise_image(), seed=0)
    p = gen.sample_params(1, 0)
    for hue in (-0.5, -0.1, 0.0, 0.05, 0.5):
        q = replace(p, jitter_applied=torch.tensor([True]), jitter_order=torch.tensor([[HUE, 0, 1, 2]]),
                    brightness=torch.ones(1), contrast=torch.ones(1), saturation=torch.ones(1),
                    hue=torch.tensor([hue]))
        ours = color_jitter(x[None].clone(), q)[0]
        assert torch.allclose(ours, TF.adjust_hue(x, hue), atol=1e-6), hue


def test_patch_array_batches_and_epochs(tmp_path):
    count = 10
    array = np.arange(count, dtype=np.uint8).repeat(4 * 4 * 3).reshape(count, 4, 4, 3)
    path = tmp_path / "patches.npy"
    save_patches(array, path)
    source = PatchArray(path, seed=1)
    assert len(source) == count and source.size == 4

    def ids(batch: torch.Tensor) -> list[int]:
        assert batch.shape[1:] == (3, 4, 4) and batch.dtype == torch.float32
        return [round(v) for v in (batch[:, 0, 0, 0] * 255).tolist()]

    epoch0 = ids(source.batch(5, 0)) + ids(source.batch(5, 1))
    epoch1 = ids(source.batch(5, 2)) + ids(source.batch(5, 3))
    assert sorted(epoch0) == list(range(count)) and sorted(epoch1) == list(range(count))
    assert epoch0 == source.permutation(0).tolist() and epoch1 == source.permutation(1).tolist()
    assert epoch0 != epoch1
    # A batch straddling two epochs: positions 8..11.
    assert ids(source.batch(4, 2)) == epoch0[8:] + epoch1[:2]
    # Pure function of (seed, index, n); in-memory arrays behave the same.
    assert ids(PatchArray(array, seed=1).batch(4, 2)) == epoch0[8:] + epoch1[:2]
    assert ids(PatchArray(array, seed=2).batch(10, 0)) != epoch0
    assert torch.equal(source.batch(3, 0)[0], torch.full((3, 4, 4), epoch0[0] / 255))


def test_patch_array_refuses_bad_input(tmp_path):
    with pytest.raises(InputError, match="missing.npy"):
        PatchArray(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(InputError, match="text.npy"):
        PatchArray(tmp_path / "text.npy")
    np.save(tmp_path / "float.npy", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(InputError, match="float.npy.*uint8"):
        PatchArray(tmp_path / "float.npy")
    with pytest.raises(InputError, match="no patches"):
        PatchArray(np.zeros((0, 4, 4, 3), np.uint8))


def test_generate_save_and_preview(tmp_path):
    image = noise_image()
    config = PatchConfig(size=16)
    array = generate_patches(image, 100, config, seed=4, chunk=32, progress=False)
    assert array.shape == (100, 16, 16, 3) and array.dtype == np.uint8
    gen = PatchGenerator(image, config, seed=4)
    assert np.array_equal(array[32:64], to_uint8(gen.batch(32, 1)))
    assert np.array_equal(array[96:], to_uint8(gen.batch(4, 3)))

    save_patches(array, tmp_path / "out" / "patches.npy")
    assert np.array_equal(np.load(tmp_path / "out" / "patches.npy"), array)
    save_preview(array[:20], tmp_path / "preview.png", ncol=8, labels=[f"class {i}" for i in range(20)], scale=3)
    save_preview(gen.batch(5, 0), tmp_path / "tensor_preview.png")
    with Image.open(tmp_path / "preview.png") as preview:
        assert preview.format == "PNG" and preview.mode == "RGB"
        assert preview.size == (2 + 8 * (48 + 2), 2 + 3 * (48 + 12 + 2))
    with Image.open(tmp_path / "tensor_preview.png") as preview:
        assert preview.size == (2 + 5 * (32 + 2), 2 + 32 + 2)
    assert sorted(f.name for f in tmp_path.rglob("*")) == ["out", "patches.npy", "preview.png", "tensor_preview.png"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "patches.npy"
    save_patches(np.zeros((1, 4, 4, 3), np.uint8), path)

    def broken_save(f, array):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_patches(np.ones((2, 4, 4, 3), np.uint8), path)
    monkeypatch.undo()
    assert np.load(path).shape == (1, 4, 4, 3)
    assert [f.name for f in tmp_path.iterdir()] == ["patches.npy"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    image = noise_image(240, 320)
    cpu = PatchGenerator(image, seed=9).batch(128, 3)
    cuda = PatchGenerator(image, seed=9, device="cuda").batch(128, 3)
    assert cuda.device.type == "cuda"
    assert (cuda.cpu() - cpu).abs().mean() < 1e-3
