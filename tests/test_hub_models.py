"""Hugging Face models from disk: transformers image classifiers (hf:FOLDER) and timm hub names
(timm:hf-hub:ORG/NAME) from the local cache, with their own preprocessing, through every command."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from compress1img import DistillConfig, InputError, PruneConfig, PTQConfig, RunConfig, evaluate_model, load_model
from compress1img import prune, quantize, save_model
from compress1img.cli import main
from compress1img.context import load_labelled
from compress1img.data import fit_image

transformers = pytest.importorskip("transformers")

CLASSES = ["cat", "dog", "fox"]
# Not ImageNet's, not the 0.875 crop, not bilinear: each shows if evaluation used something else.
PREPROCESSOR = {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 40}, "crop_pct": 0.9,
                "resample": 3, "do_normalize": True, "image_mean": [0.6, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}


def quiet(out=None) -> RunConfig:
    return RunConfig(out=out, holdout_size=32, progress=False)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny randomly initialised transformers ResNet saved with save_pretrained, and its image processor."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       id2label=dict(enumerate(CLASSES)),
                                       label2id={name: i for i, name in enumerate(CLASSES)})
    folder = tmp_path_factory.mktemp("hf") / "tiny-resnet"
    transformers.ResNetForImageClassification(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


def noise_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(count)]


@torch.no_grad()
def predicted(loaded, images: list[Image.Image], interpolation, crop_pct, mean, std) -> list[int]:
    side = loaded.input_size[-1]
    x = torch.from_numpy(np.stack([fit_image(img, side, interpolation, crop_pct) for img in images]))
    x = x.permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return loaded.module(x).argmax(1).tolist()


def test_hf_folder_model_is_evaluated_with_its_own_size_mean_std_and_crop(hf_folder, tmp_path, cli, capsys):
    loaded = load_model(f"hf:{hf_folder}")
    assert (loaded.input_size, loaded.mean, loaded.std) == ((3, 40, 40), (0.6, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert (loaded.interpolation, loaded.crop_pct, loaded.classes) == ("bicubic", 0.9, CLASSES)
    # Label every image with what the model predicts under its own preprocessing: evaluation must give 100%.
    images = noise_images(8)
    labels = predicted(loaded, images, "bicubic", 0.9, loaded.mean, loaded.std)
    assert labels != predicted(loaded, images, None, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    data = tmp_path / "data"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        img.save(data / CLASSES[label] / f"{i}.png")
    main(["eval", f"hf:{hf_folder}", "--data", str(data), "--json"])  # `cli` restores what main() changes
    assert json.loads(capsys.readouterr().out)["top1"] == 100.0
    assert evaluate_model(loaded, data)["top1"] == 100.0


def test_pruned_hf_model_reloads_from_model_pt_without_its_folder(hf_folder, tmp_path):
    folder = tmp_path / "moved"
    shutil.copytree(hf_folder, folder)
    result = prune(f"hf:{folder}", "coffee", PruneConfig(sparsity=0.3), heal=DistillConfig(steps=2, batch_size=8),
                   run=quiet(tmp_path / "run"), measure_latency=False)
    assert abs(result.report["params_removed"] - 0.3) <= 0.01
    shutil.rmtree(folder)  # model.pt records the architecture: neither the folder nor pickled code is needed
    reloaded = load_model(tmp_path / "run" / "model.pt")
    assert (reloaded.arch, reloaded.interpolation, reloaded.crop_pct, reloaded.classes) == (
        f"hf:{folder}", "bicubic", 0.9, CLASSES)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(reloaded.module(x), result.model.module.eval()(x))
    assert sum(p.numel() for p in reloaded.module.parameters()) < sum(
        p.numel() for p in load_model(f"hf:{hf_folder}").module.parameters())


def test_hf_model_quantizes_to_int8_with_ptq(hf_folder, tmp_path):
    result = quantize(f"hf:{hf_folder}", "coffee", PTQConfig(calibration_size=32), run=quiet(tmp_path / "ptq"),
                      measure_latency=False)
    assert result.report["quantization"]["int8_convs"] > 0 and result.report["quantization"]["float_convs"] == 0
    assert (tmp_path / "ptq" / "model.onnx").exists()


def test_a_folder_that_is_no_hf_model_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="cannot load hf:.* as a Hugging Face image classifier") as excinfo:
        load_model(f"hf:{tmp_path}")
    assert "\n" not in str(excinfo.value)
    with pytest.raises(InputError, match="neither a model folder .* nor ORG/NAME"):
        load_model(f"hf:{tmp_path / 'missing'}")


# --- timm hub names ------------------------------------------------------------------------------------------------

@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, and a function giving the snapshot folder of a repository
    in it, laid out the way huggingface_hub does: models--ORG--NAME/snapshots/REVISION/ and refs/main."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))

    def snapshot(repo: str):
        revision = "0123456789abcdef0123456789abcdef01234567"
        repo_dir = cache / f"models--{repo.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / "main").write_text(revision)
        return repo_dir / "snapshots" / revision

    return snapshot


def test_hf_hub_name_is_read_from_the_local_cache(hf_folder, hub_cache, monkeypatch):
    shutil.copytree(hf_folder, hub_cache("someone/tiny-resnet"))
    loaded = load_model("hf:someone/tiny-resnet")
    assert (loaded.arch, loaded.input_size, loaded.classes) == ("hf:someone/tiny-resnet", (3, 40, 40), CLASSES)
    with pytest.raises(InputError, match="hf:someone/other is not in the local Hugging Face cache"):
        load_model("hf:someone/other")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(InputError, match=r"install transformers: pip install 'compress1img\[hf\]'"):
        load_model("hf:someone/tiny-resnet")


def tiny_timm_model():
    import timm

    torch.manual_seed(0)
    overlay = {"input_size": (3, 64, 64), "interpolation": "bicubic", "crop_pct": 0.95}
    return timm.create_model("test_resnet", num_classes=3, pretrained_cfg_overlay=overlay).eval()


def test_a_timm_module_handed_over_as_it_is_keeps_its_resize_and_crop():
    from compress1img.context import as_model

    loaded = as_model(tiny_timm_model())
    assert (loaded.input_size, loaded.interpolation, loaded.crop_pct) == ((3, 64, 64), "bicubic", 0.95)


def test_timm_hub_name_loads_from_the_local_cache_with_its_preprocessing(hub_cache, tmp_path):
    from timm.models import save_for_hf

    model = tiny_timm_model()
    save_for_hf(model, hub_cache("timm/test_resnet.tiny"), safe_serialization=True)
    loaded = load_model("timm:hf-hub:timm/test_resnet.tiny")
    assert (loaded.arch, loaded.input_size, loaded.num_classes) == ("timm:hf-hub:timm/test_resnet.tiny", (3, 64, 64), 3)
    assert (loaded.interpolation, loaded.crop_pct) == ("bicubic", 0.95)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    save_model(loaded, tmp_path / "model.pt")
    shutil.rmtree(tmp_path / "hub")  # the checkpoint records the architecture: no cache needed to reload
    reloaded = load_model(tmp_path / "model.pt")
    assert (reloaded.interpolation, reloaded.crop_pct) == ("bicubic", 0.95)
    with torch.no_grad():
        assert torch.equal(reloaded.module(x), model(x))
    with pytest.raises(InputError, match="timm:hf-hub:timm/test_resnet.tiny is not in the local Hugging Face cache"):
        load_model("timm:hf-hub:timm/test_resnet.tiny")


def test_folder_evaluation_resizes_and_crops_as_the_model_says(hub_cache, tmp_path):
    from timm.models import save_for_hf

    img = noise_images(1)[0]
    timm_way, default = fit_image(img, 64, "bicubic", 0.95), fit_image(img, 64)
    assert timm_way.shape == default.shape == (64, 64, 3) and not np.array_equal(timm_way, default)
    assert np.array_equal(default, fit_image(img, 64, "bilinear", 0.875))  # what a model that says nothing gets
    save_for_hf(tiny_timm_model(), hub_cache("timm/test_resnet.tiny"), safe_serialization=True)
    loaded = load_model("timm:hf-hub:timm/test_resnet.tiny")
    (tmp_path / "data" / "a").mkdir(parents=True)
    img.save(tmp_path / "data" / "a" / "0.png")
    for name in ("b", "c"):
        (tmp_path / "data" / name).mkdir()
    assert np.array_equal(load_labelled(tmp_path / "data", loaded).images[0].numpy(), timm_way)
