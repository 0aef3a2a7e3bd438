"""Model registry, architectures and every route of load_model, on real weights where we have them."""
from __future__ import annotations

import logging
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from compress1img.errors import InputError
from compress1img.models import (LoadedModel, create_model, create_model_from_name, get_entry, list_models,
                                 load_model, save_model)
from compress1img.models.cifar_resnet import PadShortcut, cifar_resnet20

# MANIFEST.md: top-1 of the akamaster weights on cifar10_test_jpeg75.npz (all 10,000 images).
MANIFEST_TOP1 = {"cifar_resnet20": 81.03, "cifar_resnet56": 83.20}


def weights(shared_data, arch: str):
    return shared_data / "weights" / f"cifar10_{arch.removeprefix('cifar_')}_akamaster.th"


@torch.no_grad()
def top1(loaded: LoadedModel, images: np.ndarray, labels: np.ndarray) -> float:
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    correct, batch = 0, 250  # the fastest on a 2-core CPU: bigger batches spill out of the caches
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 255
        predicted = loaded.module((x - mean) / std).argmax(1)
        correct += int((predicted == torch.from_numpy(labels[start:start + batch])).sum())
    return 100.0 * correct / len(images)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- registry and architectures ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_registry_model_builds_and_forwards(name):
    entry = get_entry(name)
    assert entry.input_size == (3, 32, 32) and entry.num_classes == 10
    model = create_model(name).eval()
    calls: Counter = Counter()
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.register_forward_hook(lambda m, i, o: calls.update([id(m)]))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    # Quantizers observe each activation separately: one ReLU module per call site.
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(calls) == len(relus) and set(calls.values()) == {1}
    assert create_model(name, num_classes=7).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_registry_sizes_and_shortcuts():
    counts = {name: sum(p.numel() for p in create_model(name).parameters()) for name in list_models()}
    assert round(counts["cifar_resnet20"] / 1e6, 2) == 0.27 and round(counts["cifar_resnet56"] / 1e6, 2) == 0.85
    assert round(counts["wrn_16_4"] / 1e6, 1) == 2.7 and round(counts["wrn_40_4"] / 1e6, 1) == 8.9
    shortcuts = [m for m in cifar_resnet20().modules() if isinstance(m, PadShortcut)]
    assert [(s.in_channels, s.out_channels, s.stride) for s in shortcuts] == [(16, 32, 2), (32, 64, 2)]


def test_unknown_name_lists_known_models():
    with pytest.raises(InputError, match="cifar_resnet20, cifar_resnet32") as excinfo:
        get_entry("resnet_nonexistent")
    one_line_error(excinfo)
    with pytest.raises(InputError, match="unknown model 'no_such_model'.*timm:NAME or tv:NAME"):
        load_model("no_such_model", pretrained=False)


# --- real weights ----------------------------------------------------------------------------------------------

def test_akamaster_resnet20_exact(shared_data):
    loaded = load_model(weights(shared_data, "cifar_resnet20"), "cifar_resnet20")
    assert loaded.arch == "cifar_resnet20" and loaded.num_classes == 10 and loaded.input_size == (3, 32, 32)
    assert not loaded.module.training
    with np.load(shared_data / "cifar10_test_lossless20.npz") as data:
        assert top1(loaded, data["images"], data["labels"]) == 100.0
    # The whole file, not a slice: the MANIFEST figure is for all 10,000 images, and a 1,000-image slice
    # varies by over 1 point (images[::10] gives 79.5%), so only the full set pins the weights down.
    with np.load(shared_data / "cifar10_test_jpeg75.npz") as data:
        assert top1(loaded, data["images"], data["labels"]) == pytest.approx(MANIFEST_TOP1["cifar_resnet20"], abs=0.05)


def test_akamaster_resnet56_loads_strict(shared_data):
    loaded = load_model(weights(shared_data, "cifar_resnet56"), "cifar_resnet56")
    assert loaded.source == "cifar10_resnet56_akamaster.th (state dict, arch cifar_resnet56)"
    with np.load(shared_data / "cifar10_test_lossless20.npz") as data:
        assert top1(loaded, data["images"], data["labels"]) == 100.0
    with np.load(shared_data / "cifar10_test_jpeg75.npz") as data:  # 200 images, 20 per class
        assert top1(loaded, data["images"][::50], data["labels"][::50]) >= MANIFEST_TOP1["cifar_resnet56"] - 6


def test_akamaster_file_into_wrong_arch_names_first_key(shared_data):
    with pytest.raises(InputError) as excinfo:
        load_model(weights(shared_data, "cifar_resnet56"), "cifar_resnet20")
    assert one_line_error(excinfo).startswith(
        f"weights file {weights(shared_data, 'cifar_resnet56')} does not fit cifar_resnet20: "
        "layer1.3.conv1.weight is in the file but not in the model")


# --- names -----------------------------------------------------------------------------------------------------

def test_timm_and_torchvision_names():
    model, cfg = create_model_from_name("timm:resnet18", num_classes=10)
    assert cfg == {"arch": "timm:resnet18", "input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406),
                   "std": (0.229, 0.224, 0.225), "num_classes": 10, "interpolation": "bicubic", "crop_pct": 0.95}
    loaded = load_model("tv:mobilenet_v3_small", pretrained=False)
    assert (loaded.arch, loaded.input_size, loaded.num_classes) == ("tv:mobilenet_v3_small", (3, 224, 224), 1000)
    assert (loaded.interpolation, loaded.crop_pct) == ("bilinear", 0.875)  # 224 of 256, as torchvision evaluates
    assert loaded.mean == pytest.approx((0.485, 0.456, 0.406)) and loaded.std == pytest.approx((0.229, 0.224, 0.225))
    small = load_model("resnet18", pretrained=False, num_classes=10, input_size=32)  # bare timm name
    assert (small.arch, small.input_size, small.num_classes) == ("timm:resnet18", (3, 32, 32), 10)
    assert (small.interpolation, small.crop_pct) == ("bicubic", None)  # its crop fraction was for 224 px
    with pytest.raises(InputError, match="unknown torchvision"):
        create_model_from_name("tv:no_such_net")


def test_pretrained_weights_not_in_the_cache_is_a_clear_error(monkeypatch, tmp_path):
    # Offline mode and an empty cache: the same failure as a machine without network, without using one.
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InputError) as excinfo:
        load_model("timm:resnet18")
    assert str(excinfo.value) == ("could not get pretrained weights for timm:resnet18 (no network?): "
                                  "pass a weights file and --arch timm:resnet18")
    with pytest.raises(InputError, match="no pretrained weights for cifar_resnet20"):
        load_model("cifar_resnet20")


# --- our own format and state dicts -----------------------------------------------------------------------------

def random_resnet20(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = cifar_resnet20(num_classes)
    for m in model.modules():  # non-trivial BN statistics, so a lost buffer would show in the outputs
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_save_and_load_round_trip(tmp_path):
    model = random_resnet20()
    x = torch.randn(4, 3, 32, 32)
    original = LoadedModel(model, "cifar_resnet20", (3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 10,
                           classes=[f"c{i}" for i in range(10)], source="test")
    save_model(original, tmp_path / "out" / "model.pt", extra={"note": "hello", "steps": 3})
    loaded = load_model(tmp_path / "out" / "model.pt")
    assert (loaded.arch, loaded.input_size, loaded.mean, loaded.std, loaded.classes) == (
        "cifar_resnet20", (3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), original.classes)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))
    raw = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert (raw["format"], raw["version"], raw["note"], raw["steps"]) == ("compress1img", 2, "hello", 3)
    assert list(tmp_path.joinpath("out").iterdir()) == [tmp_path / "out" / "model.pt"]
    with pytest.raises(ValueError, match="arch"):
        save_model(original, tmp_path / "x.pt", extra={"arch": "wrn_16_4"})


def test_state_dict_wrappers_prefix_and_inferred_classes(tmp_path):
    model = random_resnet20(num_classes=5)
    state = {f"module.{k}": v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    torch.save({"model_state_dict": state, "epoch": 3}, tmp_path / "w.pth")
    loaded = load_model(tmp_path / "w.pth", "cifar_resnet20")
    x = torch.randn(2, 3, 32, 32)
    assert loaded.num_classes == 5
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))


def test_state_dict_shape_mismatch_and_missing_arch(tmp_path):
    state = cifar_resnet20().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 16, 3, 3)
    torch.save(state, tmp_path / "x.th")
    with pytest.raises(InputError) as excinfo:
        load_model(tmp_path / "x.th", "cifar_resnet20")
    assert f"weights file {tmp_path / 'x.th'} does not fit cifar_resnet20: layer1.0.conv1.weight has shape " \
           "[32,16,3,3] in the file, [16,16,3,3] in the model" == one_line_error(excinfo)
    torch.save(cifar_resnet20().state_dict(), tmp_path / "r20.th")
    with pytest.raises(InputError, match="does not fit cifar_resnet56: layer1.3.conv1.weight is missing"):
        load_model(tmp_path / "r20.th", "cifar_resnet56")
    with pytest.raises(InputError, match="r20.th holds only weights .*pass --arch.*--arch cifar_resnet20"):
        load_model(tmp_path / "r20.th")


# --- programs and pickles -----------------------------------------------------------------------------------------

def test_torchscript_route(tmp_path, caplog):
    model = random_resnet20()
    torch.jit.save(torch.jit.script(model), tmp_path / "model.ts")
    with pytest.raises(InputError, match="--input-size"):
        load_model(tmp_path / "model.ts")
    with caplog.at_level(logging.WARNING, logger="compress1img"):
        loaded = load_model(tmp_path / "model.ts", input_size=32)
    assert "ImageNet mean/std" in caplog.text
    assert (loaded.arch, loaded.input_size, loaded.num_classes) == (None, (3, 32, 32), 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded.module(x), atol=1e-5)
    with pytest.raises(InputError, match="outputs 10 classes, expected 5"):
        load_model(tmp_path / "model.ts", input_size=32, num_classes=5)
    with pytest.raises(InputError, match="cannot save"):
        save_model(loaded, tmp_path / "again.pt")


def test_torch_export_route(tmp_path):
    model = random_resnet20()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = load_model(tmp_path / "model.pt2", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert (loaded.arch, loaded.input_size, loaded.num_classes, loaded.std) == (None, (3, 32, 32), 10,
                                                                                (0.2, 0.2, 0.2))
    with torch.no_grad():
        assert torch.allclose(model(x), loaded.module(x), atol=1e-5)
    with pytest.raises(InputError, match="does not accept 3x8x8 input"):
        load_model(tmp_path / "model.pt2", input_size=8)


class _CreatesFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_crafted_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _CreatesFile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(InputError) as excinfo:
        load_model(tmp_path / "evil.pt", "cifar_resnet20")
    assert "--trust-model" in one_line_error(excinfo) and "arbitrary code" in str(excinfo.value)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):  # a bare pickle too, not written by torch.save
        (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_CreatesFile(marker), protocol=protocol))
        with pytest.raises(InputError):
            load_model(tmp_path / "evil.pkl", "cifar_resnet20")
    assert not marker.exists()


def test_trusted_pickled_module(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval()
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(InputError, match=r"torch\.nn\.modules\.container\.Sequential.*--trust-model"):
        load_model(tmp_path / "full.pt", input_size=32)
    loaded = load_model(tmp_path / "full.pt", trust_model=True, input_size=32)
    assert (loaded.arch, loaded.num_classes, loaded.source) == (None, 4, "full.pt (pickled module)")
    with pytest.raises(InputError, match="model .*full.pt does not accept 3x64x64 input: "):
        load_model(tmp_path / "full.pt", trust_model=True, input_size=64)


@pytest.mark.parametrize("name, content, message", [
    ("missing.pt", None, "model file .*missing.pt not found"),
    ("empty.pt", b"", "empty"),
    ("random.pt", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a PyTorch model"),
    ("notes.txt", b"these are not weights\n", "not a PyTorch model"),
    ("model.onnx", b"\x08\x07", "cannot load ONNX model .*model.onnx: "),
])
def test_bad_model_files(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as excinfo:
        load_model(tmp_path / name, "cifar_resnet20")
    assert str(tmp_path / name) in one_line_error(excinfo)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_model(tmp_path)
