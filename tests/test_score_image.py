"""`score-image`: ranking candidate source images for a teacher, through the API and the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from compress1img import InputError
from compress1img.api import bundled_teacher, score_images
from compress1img.scoring import PREDICTORS, class_predictors, effective_rank, image_density
from cli_run import ONE_THREAD, run_cli


def test_a_real_picture_outranks_noise_for_the_bundled_teacher():
    ranking = score_images(["noise", "china"], patches=256, device="cpu", progress=False)
    assert [row["image"] for row in ranking] == ["china", "noise"]
    assert [row["rank"] for row in ranking] == [1, 2]
    for row in ranking:
        assert set(PREDICTORS) <= set(row) and 0 <= row["score"] <= 1
        assert row["score"] == pytest.approx((row["evenness"] + row["diversity"]) / 2)
    # The ResNet-20 sees every CIFAR-10 class somewhere in the photo, far from evenly in noise.
    china, noise = ranking
    assert china["classes"] == 1.0 and china["evenness"] > noise["evenness"] + 0.2
    assert noise["density"] > china["density"] and noise["edges"] > china["edges"]


def test_scores_are_a_function_of_the_seed():
    teacher = bundled_teacher()
    first = score_images(["coffee"], teacher, patches=128, seed=3, device="cpu", progress=False)
    again = score_images(["coffee"], teacher, patches=128, seed=3, device="cpu", progress=False)
    other = score_images(["coffee"], teacher, patches=128, seed=4, device="cpu", progress=False)
    assert first == again
    assert first[0]["evenness"] != other[0]["evenness"]


def test_a_bundled_set_is_scored_picture_by_picture():
    ranking = score_images(["photos"], patches=64, device="cpu", progress=False)
    assert sorted(row["image"] for row in ranking) == ["astronaut", "chelsea", "china", "coffee"]


def test_class_predictors_span_zero_to_one():
    one_class = torch.zeros(100, 10)
    one_class[:, 3] = 5.0
    assert str(class_predictors(one_class, 10)["evenness"]) == "0.0"  # printed as 0.000, not -0.000
    assert class_predictors(one_class, 10)["classes"] == pytest.approx(0.1)
    every_class = torch.eye(10).repeat(10, 1) * 5.0
    predictors = class_predictors(every_class, 10)
    assert predictors["evenness"] == pytest.approx(1.0) and predictors["classes"] == 1.0
    assert predictors["confidence"] == pytest.approx(float(torch.softmax(every_class[0], 0).max()))
    # 4 patches can show at most 4 of 1000 classes: four different ones are perfectly even.
    assert class_predictors(torch.eye(1000)[:4], 1000)["evenness"] == pytest.approx(1.0)


def test_effective_rank_of_flat_and_isotropic_features():
    generator = torch.Generator().manual_seed(0)
    line = torch.randn(500, 1, generator=generator) * torch.randn(1, 64, generator=generator)
    assert effective_rank(line) < 0.05
    assert effective_rank(torch.randn(5000, 64, generator=generator)) > 0.9
    assert effective_rank(torch.ones(10, 64)) == 0.0


def test_density_and_edges_grow_with_detail():
    flat = image_density(Image.new("RGB", (300, 200), (120, 130, 140)))
    rng = np.random.default_rng(0)
    noisy = image_density(Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)))
    assert flat["edges"] == 0.0 and noisy["edges"] > 0.5
    assert noisy["density"] > 10 * flat["density"]


def test_cli_ranks_as_json_and_writes_a_labelled_preview_per_image(tmp_path):
    proc = run_cli("score-image", "noise", "coffee", "--patches", "128", "--json", "--preview", tmp_path / "look.png",
                   "--device", "cpu", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    ranking = json.loads(proc.stdout)
    assert [row["image"] for row in ranking] == ["coffee", "noise"]
    assert ranking[0]["score"] >= ranking[1]["score"]
    for name in ("look-coffee.png", "look-noise.png"):
        with Image.open(tmp_path / name) as preview:
            # 64 patches of 32 px shown at 2x, 8 per row, with a label line under each.
            assert preview.format == "PNG" and preview.width == 2 + 8 * (64 + 2) and preview.height > preview.width
    assert sorted(p.name for p in tmp_path.iterdir()) == ["look-coffee.png", "look-noise.png"]


def test_cli_table_names_every_column():
    proc = run_cli("score-image", "chelsea", "--patches", "64", "--device", "cpu", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[:2]
    assert header.split() == ["rank", "score", *PREDICTORS, "image"]
    assert row.split()[0] == "1" and row.split()[-1] == "chelsea"


def test_class_names_for_the_previews_must_fit_the_teacher(tmp_path):
    with pytest.raises(InputError, match="--classes names 3 classes, the teacher has 10"):
        score_images(["coffee"], classes=["a", "b", "c"], preview=tmp_path / "p.png", progress=False)
    assert not (tmp_path / "p.png").exists()
    teacher = bundled_teacher()
    names = [f"name{i}" for i in range(10)]
    score_images(["coffee"], teacher, classes=names, patches=16, device="cpu", progress=False)
    assert teacher.classes == names
