"""What a run tells its user: report.json to repeat it, report.md to read it, and the warning for a poor result.

report.json holds every figure the stages measured, the settings of every stage as resolved
(`config`), the command line (or the API function), the package versions, the seed, the device
and the training histories. Measured figures are kept to seven significant digits: the models
compute in float32, whose eighth digit is noise (83.0, not 82.99999833106995); the settings
under `config` are kept exactly as given.

report.md is the document a person reads: what was done, the original against the compressed
model, the warnings, the healing curve (healing.png), the patches the model learnt from
(patches.png, written by the run context), the time each stage took, and how to repeat the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import numbers
import os
import platform
import shlex
from contextvars import ContextVar
from pathlib import Path

from .outputs import atomic_write_text
from .plots import Chart, Series, save_line_chart

HEALING_PNG = "healing.png"
PATCHES_PNG = "patches.png"
# A result this far from the original is reported as a warning. In docs/benchmarks.md healed 50%-pruned
# ResNet-56s reach 69-81% held-out agreement, from-scratch students 46-62% (at 18-52% top-1 against 83%);
# a 2-step pruning run ended at 7%. Under half, the model mostly answers differently from the original.
MIN_HOLDOUT_AGREEMENT = 50.0
# Top-1 points below the original's: 30-50% pruning of ResNet-56 with 1,500 healing steps lost 1.0-7.2
# points, 70% lost 13 and an unhealed cut 57 (docs/benchmarks.md). More than 10 needs more healing or less pruning.
MAX_TOP1_DROP = 10.0
PACKAGES = ("compress1img", "torch", "torchvision", "torchao", "torch-pruning", "onnx", "onnxruntime", "timm")
# Report keys report.md shows in their own sections, not among the details.
_SECTIONED = ("command", "command_line", "api_function", "warnings", "config", "versions", "python", "seed",
              "history", "per_iteration", "stage_seconds", "latency_ms", "onnx_bytes_by_model", "speed_warning")

_command_line: ContextVar[str | None] = ContextVar("compress1img_command_line", default=None)
# `--nproc N` starts the ranks with a command line of their own: this tells them the one the user typed.
LAUNCHED_AS = "COMPRESS1IMG_COMMAND_LINE"


# --- what makes a run repeatable -----------------------------------------------------------------------------------

@contextlib.contextmanager
def command_line(argv: list[str]):
    """While the CLI runs a command: the command line its report records (in a rank that `--nproc`
    started, the one the user typed)."""
    token = _command_line.set(os.environ.get(LAUNCHED_AS) or shlex.join(argv))
    try:
        yield
    finally:
        _command_line.reset(token)


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def settings(**parts) -> dict:
    """Each part as plain data: a settings dataclass with every field (and a quantizer's method), paths as text."""
    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            method = getattr(type(value), "method", None)
            return plain({**({"method": method} if isinstance(method, str) else {}), **dataclasses.asdict(value)})
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value
    return plain(parts)


def provenance(command: str, seed: int, config: dict) -> dict:
    """The report's record of how the run was made: command line or API function, seed, settings, versions."""
    return {"command_line": _command_line.get(), "api_function": f"compress1img.{command}", "seed": seed,
            "config": config, "versions": versions(), "python": platform.python_version()}


def for_json(value, exact: bool = False):
    """`value` as JSON data: measured floats to seven significant digits (settings, under `config`, exactly),
    NaN and infinities as null, paths as text."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return None
        return value if exact else float(f"{value:.7g}")
    if isinstance(value, dict):
        return {str(k): for_json(v, exact or k == "config") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [for_json(v, exact) for v in value]
    return str(value)


# --- the warning -----------------------------------------------------------------------------------------------------

def quality_warnings(report: dict) -> list[str]:
    """One line naming what is far from the original and what to try, or nothing."""
    problems, original = [], _original(report)
    agreement = report.get("holdout_agreement")
    if agreement is not None and math.isfinite(agreement) and agreement < MIN_HOLDOUT_AGREEMENT:
        problems.append(f"it picks the {original}'s class on {agreement:.1f}% of the held-out patches "
                        f"(under {MIN_HOLDOUT_AGREEMENT:.0f}%)")
    final, teacher = report.get("final_top1", report.get("student_top1")), report.get("teacher_top1")
    if final is not None and teacher is not None and teacher - final > MAX_TOP1_DROP:
        problems.append(f"its top-1 on {report['eval_data']} is {final:.1f}% against the {original}'s {teacher:.1f}% "
                        f"({final - teacher:+.1f} points, more than {MAX_TOP1_DROP:.0f} below)")
    if not problems:
        return []
    tries = [f"more --steps (this run: {_trained_steps(report)})",
             "another image (`compress1img score-image` ranks candidates for your model)"]
    if "requested_sparsity" in report:
        tries.append(f"a lower --sparsity (this run: {report['requested_sparsity']:g})")
    if report.get("quantization", {}).get("method") == "ptq":
        tries.append("--method qat")
    return [f"the {'student' if report['command'] == 'distill' else 'compressed model'} is far from the {original}: "
            f"{'; '.join(problems)}; try {', '.join(tries[:-1])} or {tries[-1]}"]


def _original(report: dict) -> str:
    """What the report calls the model it started from."""
    return "teacher" if report["command"] == "distill" else "original"


def _trained_steps(report: dict) -> int:
    if report["command"] == "distill":
        return report["steps"]
    return report.get("heal_steps") or report.get("quantization", {}).get("qat_steps") or 0


# --- writing --------------------------------------------------------------------------------------------------------

def write_report(out_dir: str | Path, report: dict, title: str, patch_grid: bool = False) -> None:
    """healing.png (when the run trained), report.md, then report.json: the last file a finished run writes.
    `patch_grid`: patches.png is there for report.md to show."""
    out_dir = Path(out_dir)
    figures = {"patches": PATCHES_PNG} if patch_grid else {}
    chart = healing_chart(report)
    if chart is not None:
        save_line_chart(chart, out_dir / HEALING_PNG)
        figures["healing"] = HEALING_PNG
    atomic_write_text(out_dir / "report.md", render_markdown(title, report, figures))
    atomic_write_text(out_dir / "report.json", json.dumps(for_json(report), indent=2) + "\n")


# --- the healing curve -----------------------------------------------------------------------------------------------

def training_rows(report: dict) -> list[tuple[str, int, dict]]:
    """(stage, step counted from the run's first training step, history row) for every evaluation of the run."""
    rows, offset = [], 0
    for iteration in report.get("per_iteration", []):
        for row in iteration.get("heal_history", []):
            rows.append((f"heal {iteration['iteration']}", offset + row["step"], row))
        offset += iteration.get("heal_steps", 0)
    for row in report.get("quantization", {}).get("qat_history", []):
        rows.append(("QAT", offset + row["step"], row))
    for row in report.get("history", []):
        rows.append((report["command"], row["step"], row))
    return rows


def healing_chart(report: dict) -> Chart | None:
    """Held-out agreement (and top-1 with labelled data) against training steps; None for a run without training."""
    rows = training_rows(report)
    if not rows:
        return None
    agreement, accuracy, marks, offset = [], [], [], 0
    iterations = report.get("per_iteration", [])
    for iteration in iterations:  # each cut: the fall it caused, then its healing
        if len(iterations) > 1 or "quantization" in report:
            marks.append((offset, f"cut {iteration['iteration']}"))
        for when in ("cut", "repair"):
            if f"holdout_agreement_after_{when}" in iteration:
                agreement.append((offset, iteration[f"holdout_agreement_after_{when}"]))
            if f"top1_after_{when}" in iteration:
                accuracy.append((offset, iteration[f"top1_after_{when}"]))
        for row in iteration.get("heal_history", []):
            agreement.append((offset + row["step"], row["holdout_agreement"]))
            if "accuracy" in row:
                accuracy.append((offset + row["step"], row["accuracy"]))
        offset += iteration.get("heal_steps", 0)
    if iterations and report.get("quantization", {}).get("qat_history"):
        marks.append((offset, "QAT"))
    for stage, step, row in training_rows(report):
        if stage.startswith("heal "):
            continue
        agreement.append((step, row["holdout_agreement"]))
        if "accuracy" in row:
            accuracy.append((step, row["accuracy"]))
    series = [Series(f"held-out agreement with the {_original(report)} ({_count(report['holdout_patches'])} patches)",
                     agreement)]
    if accuracy:
        series.append(Series(f"top-1 on {Path(report['eval_data'].split(' (')[0]).name}", accuracy))
    references = [(f"{_original(report)}'s top-1", report["teacher_top1"])] if "teacher_top1" in report and accuracy \
        else []
    return Chart(title=f"compress1img {report['command']}: {_model_name(report)}", x_label="training step",
                 y_label="percent", series=series, references=references, marks=marks)


# --- report.md -------------------------------------------------------------------------------------------------------

def render_markdown(title: str, report: dict, figures: dict | None = None) -> str:
    """The document: what was done, warnings, original vs compressed, healing, patches, timings, details, repeating."""
    figures = figures or {}
    lines = [f"# {title}", "", _what_was_done(report), ""]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    lines += _summary(report) + _healing(report, figures) + _patches(report, figures) + _timings(report)
    lines += _details(report) + _repeating(report)
    return "\n".join(lines)


def _model_name(report: dict) -> str:
    return report.get("model") or report.get("student") or ""


def _source(report: dict) -> str:
    """What the patches were cut from: the image, or a few images by name (a long list is in report.json)."""
    images = report.get("images") or []
    if 1 < len(images) <= 8:
        return f"{len(images)} images ({', '.join(Path(image).name for image in images)})"
    return report.get("image") or "the patch file"


def _what_was_done(report: dict) -> str:
    command, image = report["command"], _source(report)
    if command == "distill":
        learnt = (", learning the teacher's last feature map through a frozen copy of the teacher's classifier"
                  if report.get("match") == "features" else "")
        return (f"{report['student']} trained from scratch for {report['steps']:,} steps to imitate "
                f"{report['teacher']}{learnt}{_averaged(report, 'distill')} on patches of {image}.")
    done = []
    if "params_after" in report:
        if "weight_sparsity" in report:
            done.append(f"{_percent(100 * report['weight_sparsity'])} of the conv/linear weights zeroed")
        else:
            done.append(f"{_percent(100 * report['params_removed'])} of the parameters removed "
                        f"({report['mode']}, {report['importance']} importance, {report['iterations']} "
                        f"iteration{'s' * (report['iterations'] > 1)})")
        done.append(f"healed {report['heal_steps']:,} steps by distillation from the original"
                    f"{_averaged(report, 'heal')}" if report["heal_steps"] else "not healed")
    if "quantization" in report:
        q = report["quantization"]
        done.append(f"quantized to int8 by {q['qat_steps']:,} steps of quantization-aware training"
                    f"{_averaged(report, 'quantize', 'training')}" if q["method"] == "qat"
                    else f"quantized to int8 by calibration on {q['calibration_patches']:,} patches (PTQ)")
    return f"{report['model']}: {', '.join(done)}; patches of {image}."


def _averaged(report: dict, *where: str) -> str:
    """Words for a training that returned a moving average of its weights (DistillConfig.ema), else nothing."""
    settings = report.get("config") or {}
    for key in where:
        settings = settings.get(key) or {}
    decay = settings.get("ema")
    return f" (the moving average of its weights kept, decay {decay:g})" if decay else ""


def _summary(report: dict) -> list[str]:
    columns, original_name = _columns(report), _original(report)
    names = [name for name, _ in columns]
    (_, original), (_, final) = columns[0], columns[-1]
    rows = [("parameters", "params", _count, _relative), ("MACs per image", "macs", _si, _relative),
            ("ONNX file", "onnx", _size, _relative)]
    if "teacher_top1" in report:
        rows.append((f"top-1 on {report['eval_data']}", "top1", _percent,
                     lambda a, b: f"{b - a:+.1f} pt"))
        rows.append((f"agreement with the {original_name} on {report['eval_data']}", "test_agreement", _percent,
                     None))
    rows.append((f"agreement with the {original_name} on {_count(report['holdout_patches'])} held-out patches",
                 "holdout", _percent, None))
    for batch in _timed_batches(report):
        rows.append((f"latency at batch {batch[1:]} (ONNX Runtime, this machine)", batch, _ms,
                     lambda a, b: f"{a / b:.2f}x {'faster' if a >= b else 'slower'}"))
    heading = "Teacher vs student" if report["command"] == "distill" else "Original vs compressed"
    lines = [f"## {heading}", "", "| | " + " | ".join(names) + " | change |",
             "|---|" + "---|" * (len(names) + 1)]
    for label, key, show, change in rows:
        if all(figures.get(key) is None for _, figures in columns[1:]):
            continue
        cells = [show(figures[key]) if figures.get(key) is not None else "–" for _, figures in columns]
        delta = change(original[key], final[key]) if change and original.get(key) and final.get(key) is not None \
            else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {delta} |")
    lines += ["", f"Held-out agreement: how often the model picks the {original_name}'s top-1 class on patches cut "
              "from the image with another seed and never trained on (the progress bar's `batch_agree` is the same "
              "on the current training batch, which the model is learning from)."]
    if "speedup_note" in report:
        lines += ["", f"Note: {report['speedup_note']}."]
    return lines + [""]


def _timed_batches(report: dict) -> list[str]:
    """The batch sizes the run timed ("b1", "b32", ... as the latency keys name them), in the order timed."""
    timing = report.get("latency_ms") or {}
    first = next(iter(timing.values()), {})
    return [key.removesuffix("_ms") for key in first] or ["b1", "b32"]


def _columns(report: dict) -> list[tuple[str, dict]]:
    """The models the summary compares, the original first, each with the figures the run measured for it."""
    if report["command"] == "distill":
        return [("teacher", {"params": report.get("teacher_params"), "macs": report.get("teacher_macs"),
                             "top1": report.get("teacher_top1")}),
                ("student", {"params": report.get("student_params"), "macs": report.get("student_macs"),
                             "onnx": report.get("onnx_bytes"), "top1": report.get("student_top1"),
                             "test_agreement": report.get("test_agreement"),
                             "holdout": report.get("holdout_agreement")})]
    timing, sizes = report.get("latency_ms", {}), report.get("onnx_bytes_by_model", {})

    def model(name: str, **figures) -> dict:
        return {"onnx": sizes.get(name), **{b: timing.get(name, {}).get(f"{b}_ms") for b in _timed_batches(report)},
                **figures}

    columns = [("original", model("dense", params=report.get("params_before", report.get("params")),
                                  macs=report.get("macs_before", report.get("macs")), top1=report.get("teacher_top1")))]
    if "params_after" in report:
        columns.append(("pruned", model("pruned", params=report["params_after"], macs=report["macs_after"],
                                        top1=report.get("pruned_top1"),
                                        holdout=report.get("pruned_holdout_agreement"))))
    if "quantization" in report:
        columns.append(("int8", model("int8", params=columns[-1][1]["params"], macs=columns[-1][1]["macs"],
                                      top1=report.get("int8_top1"))))
    final = columns[-1][1]
    final.update({"holdout": report.get("holdout_agreement"), "test_agreement": report.get("test_agreement")})
    if report.get("onnx_bytes") is not None:
        final["onnx"] = report["onnx_bytes"]  # the model.onnx written
    return columns


def _healing(report: dict, figures: dict) -> list[str]:
    rows = training_rows(report)
    iterations = report.get("per_iteration", [])
    if not rows and not iterations:
        return []
    lines = ["## Healing" if iterations else "## Training", ""]  # pruning heals; QAT and distillation train
    if "healing" in figures:
        lines += [f"![held-out agreement during training]({figures['healing']})", ""]
    if iterations:
        columns = [("iteration", "iteration", str), ("sparsity target", "target_sparsity", lambda v: _percent(100 * v)),
                   ("agreement after the cut", "holdout_agreement_after_cut", _percent),
                   ("top-1 after the cut", "top1_after_cut", _percent),
                   ("agreement after repair", "holdout_agreement_after_repair", _percent),
                   ("top-1 after repair", "top1_after_repair", _percent),
                   ("healing steps", "heal_steps", _count), ("agreement after healing", "holdout_agreement_after_heal",
                                                              _percent), ("healing time", "heal_seconds", _seconds)]
        lines += _table(columns, iterations) + [""]
    if rows:
        columns = [("stage", "stage", str), ("step", "step", _count),
                   ("training loss (smoothed)", "loss", lambda v: _fixed(v, 4)),
                   ("held-out agreement", "holdout_agreement", _percent),
                   ("held-out KL", "holdout_kl", lambda v: _fixed(v, 4)),
                   ("top-1 (eval slice)", "accuracy", _percent)]
        lines += _table(columns, [{**row, "stage": stage, "step": step} for stage, step, row in rows])
        lines += ["", "Steps count from the run's first training step. Top-1 during training is measured on a slice "
                  "of at most 1,000 images of the eval data, the final figures above on all of it.", ""]
    return lines


def _patches(report: dict, figures: dict) -> list[str]:
    if "patches" not in figures:
        return []
    learnt = "calibrated on" if report.get("quantization", {}).get("method") == "ptq" and "params_after" not in report \
        else "trained on"
    return ["## Patches", "", f"![patches of {_source(report)}]({figures['patches']})", "",
            f"The first patches the model was {learnt}, cut from {_source(report)}, each labelled with the "
            f"original's top-1 class (before the flips, shifts and mixing applied while training).", ""]


def _timings(report: dict) -> list[str]:
    seconds = report.get("stage_seconds")
    if not seconds:
        return []
    return ["## Time", "", "| stage | time |", "|---|---|"] + [f"| {k} | {_seconds(v)} |" for k, v in
                                                            seconds.items()] + [""]


def _details(report: dict) -> list[str]:
    def flat(value) -> bool:  # what fits in a cell: a scalar or a list of scalars
        items = value if isinstance(value, list) else [value]
        return not isinstance(value, dict) and not any(isinstance(x, (dict, list)) for x in items)

    lines = ["## Details", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_human(k, v)} |" for k, v in report.items() if k not in _SECTIONED and flat(v)]
    for key, value in report.items():
        if key not in _SECTIONED and isinstance(value, dict):
            lines += ["", f"### {key}", "", "| | |", "|---|---|"]
            lines += [f"| {k} | {_human(k, v)} |" for k, v in value.items() if flat(v)]
    if "latency_ms" in report:
        batches = _timed_batches(report)
        lines += ["", "### latency (ONNX Runtime, median ms per forward pass)", "",
                  "| model | " + " | ".join(f"batch {b[1:]}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
        lines += [f"| {name} | " + " | ".join(_ms(t[f"{b}_ms"]) for b in batches) + " |"
                  for name, t in report["latency_ms"].items()]
    return lines + ["", "Everything else (the histories, the channels kept per layer) is in report.json.", ""]


def _repeating(report: dict) -> list[str]:
    made = (f"Made by this command line:\n\n    {report['command_line']}" if report.get("command_line")
            else f"Made by the Python API, `{report.get('api_function')}`.")
    lines = ["## Repeating this run", "", made, "",
             f"Seed {report.get('seed')}, device {report.get('device')} ({report.get('device_name')}), Python "
             f"{report.get('python')}. report.json has every setting of every stage under `config`.", "",
             "| package | version |", "|---|---|"]
    return lines + [f"| {k} | {v or 'not installed'} |" for k, v in (report.get("versions") or {}).items()] + [""]


def _table(columns: list[tuple], rows: list[dict]) -> list[str]:
    """A Markdown table of `rows`, with only the columns some row has."""
    present = [c for c in columns if any(c[1] in row for row in rows)]
    lines = ["| " + " | ".join(c[0] for c in present) + " |", "|" + "---|" * len(present)]
    return lines + ["| " + " | ".join(show(row[key]) if row.get(key) is not None else "–" for _, key, show in present)
                    + " |" for row in rows]


# --- numbers for people ---------------------------------------------------------------------------------------------

def _percent(value: float) -> str:
    return f"{value:.1f}%" if math.isfinite(value) else "–"


def _fixed(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # a float's -0.0000 is 0


def _count(value: int) -> str:
    return f"{value:,}"


def _si(value: float) -> str:
    for factor, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{unit}"
    return f"{value:g}"


def _size(value: int) -> str:
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _relative(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.1f}%"


def _human(key: str, value) -> str:
    """A report value as a person reads it, judged by its key's name."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_human(key, v) for v in value) or "none"
    if isinstance(value, int):
        return _size(value) if key.endswith("_bytes") else f"{value:,}"
    if not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return "–"
    if "speedup" in key:
        return f"{value:.2f}x"
    if key.endswith("_change"):
        return f"{value:+.2f} pt"
    if "agreement" in key or "top1" in key:
        return _percent(value)
    if key.endswith(("_removed", "sparsity")):
        return _percent(100 * value)
    if "seconds" in key:
        return _seconds(value)
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
