"""The command line, run as a user runs it: a subprocess, exit codes, files written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compress1img import load_model
from compress1img.api import BUNDLED_TEACHER, bundled_teacher
from cli_run import run_cli


def run(*args, cwd: Path | None = None):
    return run_cli(*args, cwd=cwd)


def test_help_explains_every_option():
    result = run("distill", "--help")
    assert result.returncode == 0
    for option in ("--teacher", "--student", "--image", "--steps", "--batch-size", "--lr", "--temperature", "--seed",
                   "--eval-data", "--resume", "--overwrite", "--device", "--recipe", "--mix", "--teacher-signal"):
        assert option in result.stdout, option


def test_distill_writes_models_and_reports(tmp_path, tiny_teacher, test_slice):
    out = tmp_path / "run"
    result = run("distill", "--teacher", tiny_teacher, "--student", "cifar_resnet20", "--steps", "4",
                 "--batch-size", "16", "--holdout-size", "32", "--eval-every", "2", "--eval-data", test_slice,
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert "agreement with the teacher" in result.stdout
    # In a pipe progress is plain lines, never a bar redrawn with carriage returns.
    assert "\r" not in result.stderr and "distilling 4/4 steps done in " in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 4 and report["patch_size"] == 32
    assert [row["step"] for row in report["history"]] == [2, 4]
    assert 0 <= report["student_top1"] <= 100 and "accuracy" in report["history"][0]
    assert report["onnx_max_abs_diff"] < 1e-3
    assert (out / "report.md").read_text().startswith("# compress1img distill")
    assert not (out / "checkpoint.pt").exists()
    meta = {p.key: json.loads(p.value) for p in onnx.load(out / "model.onnx").metadata_props if p.key != "producer"}
    assert meta["input_size"] == [3, 32, 32] and len(meta["mean"]) == 3 and len(meta["std"]) == 3

    # The ONNX file and the reloaded PyTorch model score the same on real images.
    onnx_eval = run("eval", out / "model.onnx", "--data", test_slice, "--json")
    torch_eval = run("eval", out / "model.pt", "--data", test_slice, "--json")
    assert onnx_eval.returncode == 0 and torch_eval.returncode == 0, onnx_eval.stderr + torch_eval.stderr
    a, b = json.loads(onnx_eval.stdout.splitlines()[-1]), json.loads(torch_eval.stdout.splitlines()[-1])
    assert a["n"] == b["n"] == 200 and a["top1"] == pytest.approx(b["top1"]) == pytest.approx(report["student_top1"])

    again = run("distill", "--teacher", tiny_teacher, "--student", "cifar_resnet20", "--steps", "4", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_eval_reproduces_the_bundled_teacher_accuracy(test_slice):
    result = run("eval", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--data", test_slice, "--json")
    assert result.returncode == 0, result.stderr
    top1 = json.loads(result.stdout.splitlines()[-1])["top1"]
    assert 70 <= top1 <= 92  # 81.0% on the full JPEG-q75 test set (MANIFEST); 200 images are noisier


def test_recipe_supplies_defaults_and_the_command_line_wins(tmp_path, tiny_teacher):
    recipe = tmp_path / "r.toml"
    recipe.write_text('student = "cifar_resnet20"\nsteps = 3\nbatch_size = 8\nholdout_size = 16\n')
    out = tmp_path / "run"
    result = run("distill", "--recipe", recipe, "--teacher", tiny_teacher, "--steps", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["batch_size"] == 8

    recipe.write_text("stepz = 3\n")
    bad = run("distill", "--recipe", recipe, "--teacher", tiny_teacher, "--student", "cifar_resnet20")
    assert bad.returncode == 2 and "stepz" in bad.stderr


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "compress1img" / "recipes").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_name_only_options_of_their_command(recipe):
    import tomllib

    import typer.main

    from compress1img.cli import app

    command = recipe.name.split("-")[0]  # recipes are named COMMAND-...
    click_command = typer.main.get_command(app).commands[command]
    known = {p.name for p in click_command.params}
    values = tomllib.loads(recipe.read_text())
    assert values and {key.replace("-", "_") for key in values} <= known


def test_patches_command_writes_array_and_preview(tmp_path):
    out, preview = tmp_path / "p.npy", tmp_path / "grid.png"
    result = run("patches", "coffee", "--size", "32", "--count", "300", "--out", out, "--preview", preview)
    assert result.returncode == 0, result.stderr
    array = np.load(out)
    assert array.shape == (300, 32, 32, 3) and array.dtype == np.uint8
    assert preview.stat().st_size > 0
    assert run("patches", "coffee", "--count", "10", "--out", out).returncode == 2  # exists, no --overwrite


def test_distill_trains_on_a_pre_made_patch_file(tmp_path, tiny_teacher):
    patches = tmp_path / "p.npy"
    assert run("patches", "coffee", "--count", "100", "--out", patches).returncode == 0
    result = run("distill", "--teacher", tiny_teacher, "--student", "cifar_resnet20", "--patches", patches,
                 "--holdout-size", "20", "--steps", "2", "--batch-size", "8", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["patches_file"] == str(patches) and report["holdout_patches"] == 20


@pytest.mark.parametrize("args,needle", [
    (["eval", "missing.pt", "--data", "missing.npz"], "missing"),
    (["distill", "--teacher", "{teacher}", "--student", "cifar_resnet20", "--steps", "0"], "--steps"),
    (["distill", "--teacher", "{teacher}", "--student", "no_such_net"], "no_such_net"),
    (["distill", "--teacher", "{teacher}", "--student", "cifar_resnet20", "--image", "nope.jpg"], "nope.jpg"),
    (["distill", "--teacher", "{teacher}", "--student", "cifar_resnet20", "--mix", "blend"], "--mix"),
    (["distill", "--teacher", "{teacher}", "--student", "cifar_resnet20", "--device", "cuda"], "cuda"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, needle, tiny_teacher, tmp_path):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run(*[a.replace("{teacher}", str(tiny_teacher)) for a in args], "--out", tmp_path / "out") \
        if args[0] == "distill" else run(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback():
    result = run("eval", "missing.pt", "--data", "missing.npz", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_python_api_reloads_the_student(tmp_path, tiny_teacher):
    from compress1img import DistillConfig, RunConfig, distill

    result = distill(str(tiny_teacher), "cifar_resnet20", "coffee", DistillConfig(steps=2, batch_size=8),
                     run=RunConfig(out=tmp_path / "r", holdout_size=16, progress=False))
    student = load_model(tmp_path / "r" / "model.pt")
    assert student.arch == "cifar_resnet20" and student.input_size == (3, 32, 32)
    assert result.report["holdout_patches"] == 16
    assert result.model.arch == "cifar_resnet20"  # the trained student comes back too


def test_torchscript_model_needs_and_takes_its_preprocessing_as_flags(tmp_path, test_slice):
    scripted = tmp_path / "teacher.ts"
    torch.jit.script(bundled_teacher().module).save(str(scripted))
    missing = run("eval", scripted, "--data", test_slice)
    assert missing.returncode == 2 and "--input-size" in missing.stderr
    flags = ["--input-size", "32", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--json"]
    scripted_eval = run("eval", scripted, "--data", test_slice, *flags)
    original = run("eval", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--data", test_slice, "--json")
    assert scripted_eval.returncode == 0, scripted_eval.stderr
    assert json.loads(scripted_eval.stdout.splitlines()[-1])["top1"] == json.loads(original.stdout.splitlines()[-1])["top1"]


def test_demo_runs_end_to_end_on_the_bundled_material(tmp_path):
    result = run("demo", "--steps", "2", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert "removed" in result.stdout and "speed-up" in result.stdout
    for name in ("model.pt", "model.onnx", "report.json", "report.md"):
        assert (tmp_path / "demo" / name).is_file(), name
