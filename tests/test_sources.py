"""Where patches come from: one image as the paper cuts it, several images, a folder, small images used whole."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_run import ONE_THREAD, run_cli
from compress1img import DistillConfig, InputError, PatchConfig, PatchGenerator, PruneConfig, RunConfig, distill, \
    load_image, prune
from compress1img.images import BUNDLED_SETS, min_image_side, resolve_image
from compress1img.models import BUNDLED_TEACHER
from compress1img.sources import open_source


def folder_of_small_images(path, count: int, side: int = 32):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_one_image_gives_exactly_the_papers_patches_as_before():
    source = open_source("coffee", 32, 3, 16)
    same = PatchGenerator(load_image("coffee", min_side=min_image_side(32)), PatchConfig(size=32), seed=3)
    assert torch.equal(source.train.batch(8, 5), same.batch(8, 5))
    assert source.holdout.shape == (16, 3, 32, 32) and source.describe()["images_used"] == 1


def test_a_folder_of_small_images_is_used_whole_and_every_batch_is_a_pure_function_of_its_index(tmp_path):
    folder = folder_of_small_images(tmp_path / "small", 10)
    source = open_source(folder, 32, 0, 24)
    assert source.mode == "whole" and source.describe() == {
        "image": "10 images", "images_used": 10, "image_mode": "whole",
        "images": [str(folder / f"{i:03d}.png") for i in range(10)]}
    first = source.train.batch(10, 0)  # an epoch: each image once, as it is
    originals = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
                             for p in sorted(folder.iterdir())])
    assert sorted(first.flatten(1).sum(1).tolist()) == pytest.approx(sorted(originals.flatten(1).sum(1).tolist()))
    assert torch.equal(source.train.batch(7, 3), open_source(folder, 32, 0, 24).train.batch(7, 3))
    assert source.holdout.shape == (24, 3, 32, 32)


def test_several_images_share_each_batch_and_every_patch_comes_from_one_of_them(tmp_path):
    black, white = tmp_path / "black.png", tmp_path / "white.png"
    Image.new("RGB", (200, 200), (0, 0, 0)).save(black)
    Image.new("RGB", (200, 200), (255, 255, 255)).save(white)
    source = open_source([black, white], 32, 0, 8)
    batch = source.train.batch(64, 2)
    means = batch.flatten(1).mean(1)
    from_black = means == 0  # nothing in the pipeline lifts a black image off zero
    assert from_black.any() and (~from_black).any() and (means[~from_black] > 0.2).all()
    assert torch.equal(batch, source.train.batch(64, 2)) and not torch.equal(batch, source.train.batch(64, 3))
    assert source.mode == "patches" and source.describe()["images_used"] == 2


def test_two_copies_of_one_image_are_cut_differently_so_a_batch_repeats_no_patch(tmp_path):
    # Each image has its own patch seed and the choice among them its own stream: the same seed for
    # every image would cut the same crops out of each, and copies would give the same patches.
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    picture.save(tmp_path / "a.png")
    picture.save(tmp_path / "b.png")
    source = open_source([tmp_path / "a.png", tmp_path / "b.png"], 32, 0, 8).train
    for index in range(20):
        assert len(torch.unique(source.batch(16, index).flatten(1), dim=0)) == 16


def test_bad_image_sets_are_one_line_input_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="image folder .*empty holds no images"):
        open_source(tmp_path / "empty", 32, 0, 8)
    with pytest.raises(InputError, match="--image-mode must be one of auto, patches, whole"):
        open_source("coffee", 32, 0, 8, mode="crops")
    with pytest.raises(InputError, match="noise cannot be used whole"):
        open_source("noise", 32, 0, 8, mode="whole")


def test_the_cli_takes_a_folder_and_more_images_and_the_report_names_them(tmp_path):
    folder = folder_of_small_images(tmp_path / "small", 3)
    out = tmp_path / "run"
    result = run_cli("prune", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--sparsity", "0.3", "--no-heal",
                     "--reconstruct-patches", "0", "--holdout-size", "64", "--image", folder, "--image", "coffee",
                     "--out", out, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "3 of the 4 images are smaller than 90 px" in result.stderr  # said once, not per image
    assert "source: 4 images, cut into patches" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["images_used"] == 4 and report["image_mode"] == "patches" and report["image"] == "4 images"
    assert report["images"][-1].endswith("coffee.png")


def test_a_patch_source_of_ones_own_is_taken_as_it_is_and_its_held_out_batch_is_one_training_never_reaches():
    class Stripes:
        size = 32
        asked: list = []

        def batch(self, n, index):
            self.asked.append(index)
            return torch.full((n, 3, 32, 32), (index % 7) / 7)

    own = Stripes()
    source = open_source(own, 32, 0, 4)
    assert source.train is own and source.describe()["image_mode"] == "source"
    assert own.asked == [2**42] and source.holdout.shape == (4, 3, 32, 32)
    with pytest.raises(InputError, match="gives 32 px patches, the model expects 64 px"):
        open_source(own, 64, 0, 4)


def test_the_bundled_set_photos_gives_the_patches_of_a_folder_holding_the_same_pictures(tmp_path):
    # docs/benchmarks.md measured the default input as such a folder: the set must cut the same patches.
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in BUNDLED_SETS["photos"]:
        shutil.copy(resolve_image(name), folder)
    named, read = open_source("photos", 32, 0, 8), open_source(folder, 32, 0, 8)
    assert torch.equal(named.train.batch(16, 3), read.train.batch(16, 3)) and torch.equal(named.holdout, read.holdout)
    assert [Path(p).name for p in named.images] == [Path(p).name for p in read.images] and len(named.images) == 4
    with pytest.raises(InputError, match="'photos' names 4 bundled images .*; one image is needed here"):
        load_image("photos")


def test_compressing_heals_on_the_bundled_photos_by_default_and_distill_on_one_image(tmp_path, tiny_teacher):
    pruned = prune(tiny_teacher, config=PruneConfig(sparsity=0.3, reconstruct_patches=0), heal=None,
                   run=RunConfig(out=tmp_path / "pruned", holdout_size=8, progress=False)).report
    assert pruned["images_used"] == 4 and [Path(p).stem for p in pruned["images"]] == list(BUNDLED_SETS["photos"])
    assert pruned["config"]["image"] == "photos"
    assert "patches of 4 images (astronaut.png, chelsea.png, china.jpg, coffee.png)." in \
        (tmp_path / "pruned" / "report.md").read_text()
    trained = distill(tiny_teacher, "cifar_resnet20", config=DistillConfig(steps=1, batch_size=4),
                      run=RunConfig(holdout_size=8, progress=False)).report
    assert trained["images_used"] == 1 and trained["image"].endswith("china.jpg")


def test_the_mixing_follows_how_the_images_are_used_unless_it_is_set(tmp_path, tiny_teacher):
    # Few small images used whole heal better with a box per image at Beta(1, 1); patches keep the paper's mixing.
    folder = folder_of_small_images(tmp_path / "small", 6)
    quiet, heal = RunConfig(holdout_size=8, progress=False), DistillConfig(steps=1, batch_size=4)
    cut = PruneConfig(sparsity=0.3, reconstruct_patches=0)

    def mixing(report: dict, training: str = "heal") -> tuple:
        return report["image_mode"], report["config"][training]["mix"], report["config"][training]["mix_alpha"]

    assert mixing(prune(tiny_teacher, folder, cut, heal=heal, run=quiet).report) == ("whole", "cutmix-per-image", 1.0)
    assert mixing(prune(tiny_teacher, "coffee", cut, heal=heal, run=quiet).report) == ("patches", "cutmix", 0.25)
    chosen = DistillConfig(steps=1, batch_size=4, mix="cutmix", mix_alpha=0.5)
    assert mixing(prune(tiny_teacher, folder, cut, heal=chosen, run=quiet).report) == ("whole", "cutmix", 0.5)
    trained = distill(tiny_teacher, "cifar_resnet20", folder, heal, run=quiet).report
    assert mixing(trained, "distill") == ("whole", "cutmix-per-image", 1.0)
