"""Bring your own model: a class of your own (--arch FILE.py:CLASS), a pickled module of it, TorchScript,
torch.export and ONNX files, and the bundled teacher by name, through every command."""
from __future__ import annotations

import importlib
import json
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from compress1img import load_model
from compress1img.errors import InputError

MYNET = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.out = nn.ReLU()

        def forward(self, x):
            return self.out(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


    class MyNet(nn.Module):
        input_size = (3, 16, 16)

        def __init__(self, num_classes=10, width=16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.layer1 = nn.Sequential(*(Block(width) for _ in range(3)))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layer1(self.stem(x))), 1))
''')
TINY = ["--steps", "2", "--batch-size", "4", "--holdout-size", "64", "--image", "coffee", "--device", "cpu"]
PTQ_TINY = ["--image", "coffee", "--device", "cpu"]  # post-training quantization takes no training options


@pytest.fixture
def mynet(tmp_path, monkeypatch):
    """mynet.py (the class) and mynet.pth (a DataParallel-style checkpoint dict of its weights, 10 classes)
    in a folder of their own, which is also the working directory."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "mynet.py").write_text(MYNET)
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(MYNET, str(folder / "mynet.py"), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["MyNet"](width=16).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               folder / "mynet.pth")
    return folder


@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), labels=np.arange(24) % 10)
    return path


@pytest.fixture
def run(cli, capsys):
    """`compress1img ARGS` in this process (as the `cli` fixture, which it sets up): (exit code, stderr lines,
    stdout), 0 when the command returns."""
    from compress1img.cli import main

    def call(*args) -> tuple[int, list[str], str]:
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        else:
            code = 0
        captured = capsys.readouterr()
        return code, captured.err.strip().splitlines(), captured.out
    return call


def eval_json(run, *args) -> dict:
    code, err, out = run("eval", *args, "--json", "--device", "cpu")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


# --- a class of your own -----------------------------------------------------------------------------------

def test_a_state_dict_loads_into_your_own_class_from_a_file_or_a_module(mynet, monkeypatch):
    monkeypatch.delitem(sys.modules, "mynet", raising=False)
    by_module = load_model("mynet.pth", "mynet:MyNet", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # from cwd
    by_file = load_model("mynet.pth", "mynet.py:MyNet")
    assert (by_file.input_size, by_file.num_classes, by_file.arch_args) == ((3, 16, 16), 10, {})
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(by_file.module(x), by_module.module(x)) and by_module.std == (0.25, 0.25, 0.25)


def test_arch_args_build_your_class_and_num_classes_follows_the_weights(mynet):
    torch.manual_seed(1)
    wide = load_model("mynet.pth", "mynet.py:MyNet").module.__class__(num_classes=5, width=8)
    torch.save(wide.state_dict(), mynet / "wide.pth")
    with pytest.raises(InputError, match="does not fit"):
        load_model("wide.pth", "mynet.py:MyNet")
    loaded = load_model("wide.pth", "mynet.py:MyNet", arch_args={"width": 8})
    assert (loaded.num_classes, loaded.arch_args) == (5, {"width": 8, "num_classes": 5})


@pytest.mark.parametrize("arch, args, message", [
    ("nothere.py:MyNet", None, "nothere.py: file not found"),
    ("mynet.py:YourNet", None, "has no such name for YourNet"),
    ("no_such_package.models:MyNet", None, "cannot import no_such_package.models.*PYTHONPATH"),
    ("mynet.py:MyNet", {"depth": 3}, r"MyNet\(\{\"depth\": 3\}\) failed.*--arch-args"),
])
def test_a_class_that_cannot_be_built_is_a_one_line_error(mynet, arch, args, message):
    with pytest.raises(InputError, match=message) as excinfo:
        load_model("mynet.pth", arch, arch_args=args)
    assert "\n" not in str(excinfo.value)


def test_bad_arch_args_are_refused_before_any_work(mynet, cli, tmp_path):
    code, err = cli("prune", "mynet.pth", "--arch", "mynet.py:MyNet", "--arch-args", "[1]", "--out", tmp_path / "o")
    assert code == 2 and "--arch-args must be a JSON object" in err[-1]
    code, err = cli("prune", "mynet.pth", "--arch", "cifar_resnet20", "--arch-args", "{}", "--out", tmp_path / "o")
    assert code == 2 and "--arch-args is for a class of your own" in err[-1]
    assert not (tmp_path / "o").exists()


def test_prune_of_your_own_class_writes_a_model_that_reloads_with_its_class_or_without_code(mynet, run, tmp_path):
    out = tmp_path / "p"
    code, err, _ = run("prune", "mynet.pth", "--arch", "mynet.py:MyNet", "--drop-blocks", "1", "--sparsity", "0.5",
                    *TINY, "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["dropped_blocks"] and {"model.pt", "model.pt2", "model.onnx"} <= {p.name for p in out.iterdir()}
    with pytest.raises(InputError, match="code of your own.*--arch .*mynet.py:MyNet.*model.pt2"):
        load_model(out / "model.pt")  # a weights-only file must not be able to name code to run
    rebuilt = load_model(out / "model.pt", "mynet.py:MyNet")
    program = load_model(out / "model.pt2")
    assert sum(p.numel() for p in rebuilt.module.parameters()) == report["params_after"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt.module(x), program.module(x), atol=1e-5)
    assert (program.input_size, program.num_classes) == ((3, 16, 16), 10)


def test_a_pruned_layer_your_class_cannot_rebuild_leaves_the_code_free_program_to_reload(mynet, run, tmp_path):
    (mynet / "scaled.py").write_text(MYNET + textwrap.dedent('''
        class Scale(nn.Module):  # a layer of its own, whose width compress1img cannot set on reload
            def __init__(self, width):
                super().__init__()
                self.gamma = nn.Parameter(torch.ones(1, width, 1, 1))

            def forward(self, x):
                return x * self.gamma


        class Scaled(MyNet):
            def __init__(self, num_classes=10, width=16):
                super().__init__(num_classes, width)
                for block in self.layer1:
                    block.bn1 = nn.Sequential(block.bn1, Scale(width))
    '''))
    namespace: dict = {}
    exec(compile((mynet / "scaled.py").read_text(), "scaled.py", "exec"), namespace)
    torch.save(namespace["Scaled"]().state_dict(), mynet / "scaled.pth")
    out = tmp_path / "s"
    code, err, _ = run("prune", "scaled.pth", "--arch", "scaled.py:Scaled", *TINY, "--out", out)
    assert code == 0, err
    assert any("model.pt not written" in line and "layer1.0.bn1.1 (Scale)" in line for line in err)
    assert not (out / "model.pt").exists() and load_model(out / "model.pt2").num_classes == 10


def test_unstructured_pruning_and_eval_of_your_own_class(mynet, run, tmp_path, tiny_data):
    out = tmp_path / "u"
    code, err, _ = run("prune", "mynet.pth", "--arch", "mynet.py:MyNet", "--mode", "unstructured", *TINY, "--out", out)
    assert code == 0, err
    result = eval_json(run, out / "model.pt", "--arch", "mynet.py:MyNet", "--data", tiny_data)
    assert result["n"] == 24 and result["top1"] == eval_json(run, out / "model.pt2", "--data", tiny_data)["top1"]


def test_quantize_ptq_of_your_own_class(mynet, run, tmp_path):
    out = tmp_path / "ptq"
    code, err, _ = run("quantize", "mynet.pth", "--arch", "mynet.py:MyNet", "--method", "ptq",
                       "--calibration-size", "16", *PTQ_TINY, "--out", out)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["quantization"]["method"] == "ptq"


def test_compress_of_your_own_class_trains_it_in_int8_and_writes_a_pruned_model_that_reloads(mynet, run, tmp_path):
    out = tmp_path / "c"
    code, err, _ = run("compress", "mynet.pth", "--arch", "mynet.py:MyNet", "--qat-steps", "2",
                    "--calibration-size", "16", *TINY, "--out", out)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["quantization"]["method"] == "qat"
    assert load_model(out / "model.pt2").num_classes == 10  # the int8 program
    assert load_model(out / "pruned.pt", "mynet.py:MyNet").num_classes == 10
    assert load_model(out / "pruned.pt2").num_classes == 10


def test_distill_from_and_into_your_own_class(mynet, run, tmp_path):
    out = tmp_path / "d"
    code, err, _ = run("distill", "--teacher", "mynet.pth", "--arch", "mynet.py:MyNet", "--student", "mynet.py:MyNet",
                    "--student-args", '{"width": 8}', *TINY, "--out", out)
    assert code == 0, err
    student = load_model(out / "model.pt", "mynet.py:MyNet")
    assert student.arch_args == {"width": 8, "num_classes": 10} and student.module.fc.in_features == 8


def test_score_image_with_your_own_class_as_teacher(mynet, run):
    code, err, out = run("score-image", "coffee", "--teacher", "mynet.pth", "--arch", "mynet.py:MyNet",
                         "--patches", "8", "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])[0]["image"] == "coffee"


# --- pickled modules (--trust-model) ---------------------------------------------------------------------------

@pytest.fixture
def pickled(mynet, monkeypatch, tmp_path):
    """mynet_pickled.pth: a whole MyNet(num_classes=7) pickled beside mynet.py; the working directory is elsewhere
    and `mynet` is not imported (the unpickler has to find it)."""
    monkeypatch.delitem(sys.modules, "mynet", raising=False)
    sys.path.insert(0, str(mynet))
    try:
        torch.save(importlib.import_module("mynet").MyNet(num_classes=7), mynet / "mynet_pickled.pth")
    finally:
        sys.path.remove(str(mynet))
        del sys.modules["mynet"]
    monkeypatch.chdir(tmp_path)
    return mynet / "mynet_pickled.pth"


def test_a_pickled_module_is_found_beside_its_file_and_prune_saves_it_to_reload(pickled, run, tmp_path):
    out = tmp_path / "p"
    code, err, _ = run("prune", pickled, "--trust-model", *TINY, "--out", out)
    assert code == 0, err
    assert load_model(out / "model.pt", str(pickled.parent / "mynet.py") + ":MyNet").num_classes == 7
    assert load_model(out / "model.pt2").num_classes == 7
    assert not (out / ".work").exists()


def test_a_pickled_module_whose_code_is_missing_names_the_module_and_where_it_was_looked_for(pickled, tmp_path):
    moved = tmp_path / "elsewhere" / "mynet_pickled.pth"
    moved.parent.mkdir()
    pickled.rename(moved)
    with pytest.raises(InputError, match=r"in module 'mynet', found neither beside it \(.*elsewhere\) nor in the "
                                         r"working directory .* add the folder holding mynet.py .*PYTHONPATH"):
        load_model(moved, trust_model=True)


def test_a_pickled_module_its_class_cannot_rebuild_is_saved_as_a_program(mynet, run, tmp_path, monkeypatch):
    (mynet / "fixed.py").write_text(MYNET + textwrap.dedent('''
        class Fixed(MyNet):
            def __init__(self, width):  # an argument nothing records
                super().__init__(width=width)
    '''))
    monkeypatch.syspath_prepend(str(mynet))
    torch.save(importlib.import_module("fixed").Fixed(16), mynet / "fixed.pth")
    out = tmp_path / "f"
    code, err, _ = run("prune", "fixed.pth", "--trust-model", *TINY, "--out", out)
    assert code == 0, err
    assert not (out / "model.pt").exists() and load_model(out / "model.pt2").num_classes == 10


# --- TorchScript and torch.export files --------------------------------------------------------------------------

@pytest.fixture
def programs(mynet):
    """MyNet as TorchScript (mynet.ts), as torch.export programs with a dynamic (dynamic.pt2) and a static batch
    of 2 (static.pt2), and the same network as an nn.Module."""
    model = load_model("mynet.pth", "mynet.py:MyNet").module
    x = torch.zeros(2, 3, 16, 16)
    with pytest.warns(FutureWarning):  # torch's deprecation of TorchScript
        torch.jit.save(torch.jit.script(model), mynet / "mynet.ts")
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      mynet / "dynamic.pt2")
    torch.export.save(torch.export.export(model, (x,)), mynet / "static.pt2")
    return model


@pytest.mark.parametrize("command", [["prune"], ["compress"], ["quantize", "--method", "qat"]])
def test_a_program_is_refused_by_what_changes_its_layers_in_one_line_before_any_work(programs, cli, tmp_path,
                                                                                    command):
    for program in ("mynet.ts", "dynamic.pt2"):
        code, err = cli(*command, program, "--input-size", "16", "--out", tmp_path / "o")
        assert code == 2 and err[-1].startswith("error: cannot ") and "pass its weights with --arch" in err[-1]
        assert not (tmp_path / "o").exists()


def test_a_torchscript_teacher_distills_and_a_torch_export_program_quantizes_by_ptq(programs, run, tmp_path):
    code, err, _ = run("distill", "--teacher", "mynet.ts", "--input-size", "16", "--student", "mynet.py:MyNet",
                       *TINY, "--out", tmp_path / "d")
    assert code == 0, err
    assert json.loads((tmp_path / "d" / "report.json").read_text())["match"] == "logits"  # no layers to read in it
    code, err, _ = run("distill", "--teacher", "mynet.ts", "--input-size", "16", "--student", "mynet.py:MyNet",
                       *TINY, "--match", "features", "--out", tmp_path / "f")
    assert code == 2 and err[-1] == (
        "error: --match features needs to read the teacher's layers, which a TorchScript model does not allow: "
        "use --match logits") and not (tmp_path / "f").exists()
    code, err, _ = run("quantize", "dynamic.pt2", "--method", "ptq", "--calibration-size", "16", *PTQ_TINY,
                       "--out", tmp_path / "q")
    assert code == 0, err
    assert json.loads((tmp_path / "q" / "report.json").read_text())["holdout_agreement"] > 50


def test_a_static_batch_program_runs_in_chunks_of_its_batch(programs, run, cli, tmp_path, tiny_data):
    static = load_model("static.pt2")
    x = torch.randn(5, 3, 16, 16)  # two full chunks and a padded one
    with torch.no_grad():
        assert torch.allclose(static.module(x), programs(x), atol=1e-5)
    assert eval_json(run, "static.pt2", "--data", tiny_data, "--batch-size", "7") == {
        **eval_json(run, "dynamic.pt2", "--data", tiny_data), "model": "static.pt2 (torch.export program)"}
    code, err, _ = run("distill", "--teacher", "static.pt2", "--student", "mynet.py:MyNet", *TINY, "--batch-size",
                       "5", "--out", tmp_path / "d")
    assert code == 0, err
    code, err = cli("quantize", "static.pt2", "--method", "ptq", "--out", tmp_path / "q")
    assert code == 2 and "exported for batches of exactly 2" in err[-1] and not (tmp_path / "q").exists()


# --- ONNX files ----------------------------------------------------------------------------------------------------

class Linear16(torch.nn.Module):
    """A linear model of the raw pixels: its predictions follow the normalisation closely."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def export_plain_onnx(model, path, batch: int | None):
    """torch.onnx.export without our metadata; a static batch axis of `batch`, or a dynamic one (None)."""
    dynamic = None if batch is not None else {"x": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(batch or 2, 3, 16, 16),), str(path), input_names=["x"],
                          dynamic_axes=dynamic, dynamo=False)


def test_onnx_eval_honours_mean_and_std_and_says_what_it_assumed(tmp_path, run):
    torch.manual_seed(0)
    model = Linear16()
    export_plain_onnx(model, tmp_path / "b1.onnx", batch=1)  # a static batch of 1, no metadata
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    with torch.no_grad():  # labelled with what the model predicts in the ImageNet normalisation
        np.savez(tmp_path / "own.npz", images=images, labels=model((x - mean) / std).argmax(1).numpy())
    code, err, out = run("eval", tmp_path / "b1.onnx", "--data", tmp_path / "own.npz", "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["top1"] == 100.0
    assert any("b1.onnx records no normalisation: assuming the ImageNet mean/std" in line for line in err)
    code, err, out = run("eval", tmp_path / "b1.onnx", "--data", tmp_path / "own.npz", "--json", "--mean",
                         "0.9,0.9,0.9", "--std", "0.05,0.05,0.05", "--input-size", "16")
    assert code == 0 and json.loads(out.splitlines()[-1])["top1"] < 50 and not any("assuming" in e for e in err)
    code, err, _ = run("eval", tmp_path / "b1.onnx", "--data", tmp_path / "own.npz", "--input-size", "64")
    assert code == 2 and err[-1] == f"error: {tmp_path / 'b1.onnx'} takes 3x16x16 input (its graph's input " \
                                    f"shape), not --input-size 64"


def test_an_onnx_model_reads_the_preprocessing_our_exports_record(tmp_path):
    from compress1img import export_onnx

    export_onnx(Linear16(), tmp_path / "ours.onnx", input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5),
                std=(0.1, 0.2, 0.3), classes=[str(i) for i in range(10)])
    loaded = load_model(tmp_path / "ours.onnx")
    assert (loaded.input_size, loaded.std, loaded.classes[:2], loaded.program) == (
        (3, 16, 16), (0.1, 0.2, 0.3), ["0", "1"], "ONNX")


def test_quantize_ptq_takes_an_onnx_model(mynet, run, tmp_path):
    export_plain_onnx(load_model("mynet.pth", "mynet.py:MyNet").module, tmp_path / "mynet.onnx", batch=None)
    out = tmp_path / "q"
    code, err, _ = run("quantize", tmp_path / "mynet.onnx", "--method", "ptq", "--calibration-size", "16",
                       "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", *PTQ_TINY, "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"]["int8_convs"] > 0 and report["holdout_agreement"] > 50
    int8 = load_model(out / "model.onnx")
    assert (int8.mean, int8.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    code, err, _ = run("prune", tmp_path / "mynet.onnx", "--out", tmp_path / "p")
    assert code == 2 and "cannot prune" in err[-1] and not (tmp_path / "p").exists()


def test_distill_runs_a_static_batch_onnx_teacher_in_onnx_runtime(mynet, run, tmp_path):
    export_plain_onnx(load_model("mynet.pth", "mynet.py:MyNet").module, tmp_path / "b1.onnx", batch=1)
    out = tmp_path / "d"
    code, err, _ = run("distill", "--teacher", tmp_path / "b1.onnx", "--student", "mynet.py:MyNet", *TINY,
                       "--out", out)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["teacher"] == "b1.onnx (ONNX)"


# --- the bundled teacher by name -----------------------------------------------------------------------------------

def test_the_bundled_teacher_has_a_name_that_models_lists_and_errors_point_at(run, cli, tmp_path):
    from compress1img.api import bundled_teacher

    loaded = load_model("bundled:cifar_resnet20")
    assert loaded.classes[0] == "airplane" and loaded.source == bundled_teacher().source
    code, _, out = run("models")
    assert code == 0 and "bundled:cifar_resnet20" in out
    code, err = cli("prune", "cifar_resnet20", "--out", tmp_path / "o")
    assert code == 2 and err[-1].endswith("or use the bundled pretrained one: bundled:cifar_resnet20")
    code, err = cli("eval", "bundled:resnet", "--data", "x.npz")
    assert code == 2 and err[-1] == "error: no bundled model 'resnet': the bundled models are bundled:cifar_resnet20"
