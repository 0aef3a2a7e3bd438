"""What a user reads after a run: report.md as a document with pictures, report.json that repeats the run,
the warning for a result far from the original, and `--version`."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re

import pytest
from PIL import Image

from compress1img import DistillConfig, PTQConfig, PruneConfig, RunConfig, distill, prune, quantize
from compress1img.api import BUNDLED_TEACHER, bundled_teacher
from compress1img.report import MAX_TOP1_DROP, MIN_HOLDOUT_AGREEMENT, PACKAGES, for_json, quality_warnings
from cli_run import run_cli


def quiet(out, **changes) -> RunConfig:
    return RunConfig(out=out, holdout_size=64, eval_every=1, device="cpu", progress=False, **changes)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, test_slice):
    out = tmp_path_factory.mktemp("report") / "run"
    result = prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.5, iterations=2),
                   heal=DistillConfig(steps=4, batch_size=16, ema=0.9), run=quiet(out), eval_data=test_slice,
                   measure_latency=False)
    return out, result.report


def floats_outside_config(value, path=""):
    """Every float of a JSON value with where it is, except the settings under `config`."""
    if isinstance(value, float):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "config":
                yield from floats_outside_config(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from floats_outside_config(item, f"{path}[{i}]")


def test_report_md_compares_the_original_and_the_pruned_model_in_one_table(pruned_run):
    out, report = pruned_run
    text = (out / "report.md").read_text()
    assert text.startswith("# compress1img prune\n")
    # What was done, in one sentence: how much was cut, and how it healed.
    assert "healed 4 steps by distillation from the original (the moving average of its weights kept, decay 0.9)" \
        in text.splitlines()[2]
    assert "## Original vs compressed" in text and "| | original | pruned | change |" in text
    assert f"| parameters | {report['params_before']:,} | {report['params_after']:,} |" in text
    assert f"| top-1 on {report['eval_data']} | {report['teacher_top1']:.1f}% | {report['final_top1']:.1f}% |" in text
    assert "held-out patches" in text and "batch_agree" in text  # which agreement is which
    for section in ("## Healing", "## Patches", "## Time", "## Details", "## Repeating this run"):
        assert section in text, section
    # Numbers for people: no Python dicts or lists, no float noise.
    assert not re.search(r"\{'|\[\{|\['|\d\.\d{7,}", text), re.search(r"\{'|\[\{|\['|\d\.\d{7,}", text)


def test_report_md_shows_the_healing_curve_and_the_patches_the_model_learnt_from(pruned_run):
    out, _ = pruned_run
    text = (out / "report.md").read_text()
    assert "](healing.png)" in text and "](patches.png)" in text
    for name, at_least in (("healing.png", (600, 300)), ("patches.png", (100, 50))):
        assert (out / name).stat().st_size > 1000
        with Image.open(out / name) as picture:
            picture.verify()
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and picture.width >= at_least[0] and picture.height >= at_least[1]


def test_report_json_records_every_setting_the_versions_and_the_histories(pruned_run):
    out, result_report = pruned_run
    report = json.loads((out / "report.json").read_text())
    config = report["config"]
    for name, cls in (("run", RunConfig), ("prune", PruneConfig), ("heal", DistillConfig)):
        assert set(config[name]) == {f.name for f in dataclasses.fields(cls)}, name
    assert config["prune"]["iterations"] == 2 and config["heal"]["steps"] == 4 and config["heal"]["temperature"] == 8
    assert config["heal"]["ema"] == 0.9
    assert config["run"]["holdout_size"] == 64 and config["quantize"] is None and config["image"] == "coffee"
    assert report["seed"] == 0 and report["device"] == "cpu"
    assert report["api_function"] == "compress1img.prune" and report["command_line"] is None
    assert set(report["versions"]) == set(PACKAGES)
    assert report["versions"]["torch"] == importlib.metadata.version("torch")
    # The healing history of every iteration, steps 1-2 each (eval_every=1).
    assert [[row["step"] for row in it["heal_history"]] for it in report["per_iteration"]] == [[1, 2], [1, 2]]
    assert set(report["stage_seconds"]) == {"setup", "prune", "measure", "export", "total"}
    assert report["warnings"] == result_report["warnings"]


def test_report_json_carries_no_float_noise(pruned_run):
    out, _ = pruned_run
    report = json.loads((out / "report.json").read_text())
    noisy = [(where, v) for where, v in floats_outside_config(report) if v != float(f"{v:.7g}")]
    assert not noisy
    # Accuracies are counts: k of the 200 images is k / 2 percent exactly.
    for key in ("teacher_top1", "final_top1", "test_agreement"):
        assert (report[key] * 2).is_integer(), (key, report[key])
    assert report["config"]["patches"]["resize_factor"] == 2 ** 0.5  # settings are kept exactly


def test_for_json_rounds_float32_noise_and_keeps_settings_exact():
    noisy = 82.99999833106995  # 83% measured in float32, converted to float64
    assert for_json({"top1": noisy, "config": {"lr": 0.00012345678}, "nan": float("nan")}) == \
        {"top1": 83.0, "config": {"lr": 0.00012345678}, "nan": None}


def test_a_result_far_from_the_original_is_warned_about_with_what_to_try():
    fine = {"command": "prune", "holdout_agreement": MIN_HOLDOUT_AGREEMENT + 1, "eval_data": "test.npz",
            "teacher_top1": 83.0, "final_top1": 83.0 - MAX_TOP1_DROP + 0.5, "requested_sparsity": 0.5, "heal_steps": 2}
    assert quality_warnings(fine) == []
    for bad in ({"holdout_agreement": MIN_HOLDOUT_AGREEMENT - 1}, {"final_top1": 83.0 - MAX_TOP1_DROP - 0.5}):
        (warning,) = quality_warnings({**fine, **bad})
        assert "far from the original" in warning and "--steps" in warning and "score-image" in warning
        assert "--sparsity" in warning


def test_a_two_step_prune_warns_on_the_console_and_in_both_reports(cli, tmp_path, test_slice):
    out = tmp_path / "bad"
    code, stderr = cli("prune", "--sparsity", "0.7", "--steps", "2", "--batch-size", "8", "--image", "coffee",
                       "--eval-data", test_slice, "--device", "cpu", "--out", out, BUNDLED_TEACHER,
                       "--arch", "cifar_resnet20")
    assert code == 0, stderr
    warning_lines = [line for line in stderr if line.startswith("warning: ")]
    assert len(warning_lines) == 1 and "far from the original" in warning_lines[0], stderr
    report = json.loads((out / "report.json").read_text())
    assert report["warnings"] == [warning_lines[0].removeprefix("warning: ")]
    assert report["final_top1"] < report["teacher_top1"] - MAX_TOP1_DROP
    text = (out / "report.md").read_text()
    assert "## Warnings" in text and report["warnings"][0] in text
    assert text.index("## Warnings") < text.index("## Original vs compressed")
    assert "latency at batch 32" in text and ("faster" in text or "slower" in text)
    assert report["command_line"].startswith("compress1img prune --sparsity 0.7 --steps 2")


def test_a_calibrated_model_shows_its_calibration_patches_and_no_healing_curve(tmp_path):
    out = tmp_path / "ptq"
    report = quantize(bundled_teacher(), "coffee", PTQConfig(calibration_size=32), run=quiet(out),
                      measure_latency=False).report
    assert report["config"]["quantize"] == {"method": "ptq", "calibration_size": 32, "keep_float": [],
                                           "calibration": "minmax"}
    assert report["params"] == sum(p.numel() for p in bundled_teacher().module.parameters())
    assert (out / "patches.png").is_file() and not (out / "healing.png").exists()
    text = (out / "report.md").read_text()
    assert "| | original | int8 | change |" in text and "calibrated on" in text and "## Healing" not in text
    assert f"| parameters | {report['params']:,} | {report['params']:,} | +0.0% |" in text


def test_distill_report_has_its_settings_history_and_both_models_sizes(tmp_path, tiny_teacher, test_slice):
    out = tmp_path / "distill"
    report = distill(tiny_teacher, "cifar_resnet20", "coffee", DistillConfig(steps=2, batch_size=8),
                     run=quiet(out), eval_data=test_slice).report
    assert set(report["config"]["distill"]) == {f.name for f in dataclasses.fields(DistillConfig)}
    assert report["api_function"] == "compress1img.distill" and [row["step"] for row in report["history"]] == [1, 2]
    assert report["teacher_params"] == report["student_params"] > 0
    text = (out / "report.md").read_text()
    assert "## Teacher vs student" in text and "| | teacher | student | change |" in text
    assert "## Training" in text and "](healing.png)" in text
    assert (out / "healing.png").is_file() and (out / "patches.png").is_file()


def test_version_prints_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"compress1img {importlib.metadata.version('compress1img')}"
