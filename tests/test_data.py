"""Labelled evaluation data: .npz files and ImageFolder directories, and the errors for bad ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from compress1img.data import EvalData, check_num_classes, load_eval_data
from compress1img.errors import InputError


def write_npz(path, n=6, size=8, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
              "labels": np.arange(n) % 3, "classes": np.array(["a", "b", "c"])}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_with_stride_and_limit(tmp_path):
    path = write_npz(tmp_path / "d.npz", n=10)
    data = load_eval_data(path, image_size=8, stride=2, limit=3)
    assert data.images.dtype == torch.uint8 and data.images.shape == (3, 8, 8, 3)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0, 2, 1]
    with np.load(path) as raw:
        assert torch.equal(data.images, torch.from_numpy(raw["images"][::2][:3]))
    assert data.classes == ["a", "b", "c"] and data.source == "d.npz (3 of 10 images, stride 2)"


@pytest.mark.parametrize("overrides, message", [
    ({"images": None}, "has no 'images' array"),
    ({"labels": None}, "has no 'labels' array"),
    ({"images": np.zeros((6, 8, 8), np.uint8)}, r"must be \(N, H, W, 3\)"),
    ({"images": np.zeros((6, 3, 8, 8), np.uint8)}, r"channels last; got shape \(6, 3, 8, 8\)"),
    ({"images": np.zeros((6, 8, 8, 3), np.float32)}, "must be uint8"),
    ({"labels": np.zeros(5, np.int64)}, "has 6 images but 5 labels"),
    ({"labels": np.array([0, 1, -1, 0, 1, 2])}, "negative labels"),
    ({"labels": np.array([0, 1, 3, 0, 1, 2])}, "labels up to 3 but only 3 classes"),
    ({"labels": np.zeros(6, np.float32)}, "integer"),
])
def test_npz_validation(tmp_path, overrides, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(InputError, match=message) as excinfo:
        load_eval_data(path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_bad_paths_and_sizes(tmp_path):
    with pytest.raises(InputError, match="eval data .*d.npz has 8x8 images, the model expects 32x32"):
        load_eval_data(write_npz(tmp_path / "d.npz"), image_size=32)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="junk.npz is not a readable .npz"):
        load_eval_data(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="not found"):
        load_eval_data(tmp_path / "missing.npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="neither an .npz file nor a folder"):
        load_eval_data(tmp_path / "data.csv")
    with pytest.raises(InputError, match="stride"):
        load_eval_data(tmp_path / "d.npz", stride=0)


def test_check_num_classes():
    data = EvalData(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.tensor([3, 99]), None, "x.npz")
    with pytest.raises(InputError, match="eval data x.npz has labels up to 99 but the model has 10 classes"):
        check_num_classes(data, 10)
    check_num_classes(data, 100)
    named = EvalData(data.images, torch.tensor([0, 1]), ["cat", "dog", "emu"], "y.npz")
    with pytest.raises(InputError, match="eval data y.npz names 3 classes but the model has 10"):
        check_num_classes(named, 10)
    check_num_classes(named, 3)


def make_folder(root):
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "cat" / "b.png")
    Image.new("L", (20, 50), 128).save(root / "cat" / "a.jpg")  # grayscale: converted to RGB
    # Wide picture: red in the middle, blue bands at the sides that a centre crop must cut off.
    wide = np.zeros((100, 200, 3), np.uint8)
    wide[:, :, 2] = 255
    wide[:, 40:160] = (255, 0, 0)
    Image.fromarray(wide).save(root / "dog" / "wide.png")
    (root / "dog" / "notes.txt").write_text("ignored")
    return root


def test_image_folder(tmp_path):
    root = make_folder(tmp_path / "val")
    data = load_eval_data(root, image_size=32)
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 32, 32, 3) and data.images.dtype == torch.uint8
    assert data.images[0].float().std(dim=-1).max() == 0  # the grayscale image, as three equal channels
    assert data.images[2, :, 0].tolist()[0] == [0, 0, 255]  # small sizes: squashed whole, bands kept
    big = load_eval_data(root, image_size=64, limit=3)
    assert big.images.shape == (3, 64, 64, 3)
    wide = big.images[2].int()
    assert (wide[..., 0] > 200).all() and (wide[..., 2] < 50).all()  # shorter side 73, centre crop 64: all red
    assert load_eval_data(root, image_size=32, stride=2).labels.tolist() == [0, 1]


def test_image_folder_errors(tmp_path):
    root = make_folder(tmp_path / "val")
    with pytest.raises(InputError, match="need the model's input size"):
        load_eval_data(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        load_eval_data(tmp_path / "empty", image_size=32)
    (tmp_path / "hollow" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        load_eval_data(tmp_path / "hollow", image_size=32)
    (root / "dog" / "broken.jpg").write_text("not a jpeg")
    with pytest.raises(InputError, match="cannot read image .*broken.jpg"):
        load_eval_data(root, image_size=32)


def test_real_cifar_files(shared_data):
    small = load_eval_data(shared_data / "cifar10_test_lossless20.npz", image_size=32)
    assert small.images.shape == (20, 32, 32, 3) and small.classes is None
    data = load_eval_data(shared_data / "cifar10_test_jpeg75.npz", image_size=32, stride=10)
    assert data.images.shape == (1000, 32, 32, 3) and torch.bincount(data.labels).tolist() == [100] * 10
    assert data.classes[:2] == ["airplane", "automobile"]
    check_num_classes(data, 10)
