"""The Python API under the CLI: each function is one command and returns a `Result`.

    result = prune(model, "city.jpg", PruneConfig(sparsity=0.5), run=RunConfig(out="runs/p50"))
    result.model.module   # the pruned nn.Module
    result.report         # what report.json holds

Every function takes a model as a LoadedModel, an nn.Module (with `input_size=`, or declaring
it) or a path/name (`load_model`). A command opens a run context (context.py), runs its
stages (stages.py) and assembles its report from what they return.
"""
from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from . import distributed, scoring
from .augment import Augment, mixing_for_source
from .config import RunConfig
from .context import ModelLike, RunContext, as_model, load_labelled, open_run
from .data import EvalData, check_num_classes
from .devices import device_name, resolve_device
from .errors import InputError, first_line
from .evaluate import normalize, predict, top1
from .export import export_onnx
from .images import DEFAULT_HEALING_IMAGES, NOISE_IMAGE, expand_sets, load_image, min_image_side, resolve_image
from .latency import LatencyConfig, compare_latency
from .losses import LossFn
from .mimicry import adopt_classifier
from .models import BUNDLED_TEACHER, LoadedModel, bundled_teacher, create_model_from_name
from .outputs import check_writable, remove_if_empty
from .patches import PatchConfig
from .progress import stage
from .pruning import PruneConfig, check_drop_blocks, check_named_blocks, count
from .quantization import QATConfig, QuantizeConfig, check_keep_float
from .report import provenance, quality_warnings, settings
from .runtime import OnnxModule, default_threads
from .sources import ImageArg
from .stages import CALIBRATION_BATCH_INDEX, Healing, export, latency, measure, prune_stage, quantize_stage, \
    save_float_model
from .training import CHECKPOINT_NAME, DistillConfig, TrainingHook, processes_report, run_distillation

log = logging.getLogger("compress1img")

__all__ = ["BUNDLED_TEACHER", "Result", "bench_onnx", "bundled_teacher", "compress", "demo", "distill",
           "evaluate_model", "prune", "quantize", "score_images", "write_patch_file"]


@dataclass
class Result:
    """What a command made: the model (a LoadedModel: `.module` is the nn.Module) and its report.

    `model` is the pruned float model, the int8 PyTorch program after QAT, or the trained
    student; `int8_onnx` the int8 ONNX graph when the run quantized (PTQ has no other int8 form).
    """

    model: LoadedModel
    report: dict
    int8_onnx: bytes | None = None


def prune(model: ModelLike, image: ImageArg = None, config: PruneConfig = PruneConfig(), *,
          heal: DistillConfig | None = DistillConfig(), run: RunConfig = RunConfig(), **options) -> Result:
    """Prune `model` to `config.sparsity` and heal it by distillation from the original (`heal=None`: no healing).

    With `run.out`, writes `model.pt` (reloads with `load_model`), `model.onnx` (verified
    against PyTorch), `report.json` and `report.md`. Other options as for `compress`.
    """
    return compress(model, image, prune=config, heal=heal, run=run, **options)


def quantize(model: ModelLike, image: ImageArg = None, config: QuantizeConfig = QATConfig(), *,
             run: RunConfig = RunConfig(), **options) -> Result:
    """Quantize `model` to int8 (weights per channel, activations per tensor) by `config`'s method.

    QATConfig trains a fake-quantized copy to match the original on patches; PTQConfig only
    calibrates ONNX Runtime's quantizer on patches. With `run.out`, writes `model.onnx` (int8 QDQ,
    verified), `model.pt2` (the int8 PyTorch program, QAT only), `report.json` and `report.md`.
    """
    return compress(model, image, quantize=config, run=run, **options)


def compress(model: ModelLike, image: ImageArg = None, *, prune: PruneConfig | None = None,
             quantize: QuantizeConfig | None = None, heal: DistillConfig | None = DistillConfig(),
             run: RunConfig = RunConfig(), eval_data: str | Path | EvalData | None = None, arch: str | None = None,
             trust_model: bool = False, measure_latency: bool = True, timing: LatencyConfig = LatencyConfig(),
             patch_config: PatchConfig | None = None,
             image_mode: str = "auto", loss_fn: LossFn | None = None, augment: Augment | None = None,
             hooks: Sequence[TrainingHook] = ()) -> Result:
    """Prune and/or quantize `model` in one run, both healed against the original; returns one report.

    `heal` is the pruning's healing (None: prune only); quantization-aware training takes its
    settings from the QATConfig. `image` may be one image, several, folders of them, or a bundled set
    (sources.py; `image_mode` auto, patches or whole; None: the bundled set DEFAULT_HEALING_IMAGES);
    `patch_config` changes the patch pipeline;
    `loss_fn`, `augment` and `hooks` replace the healing's defaults (training.run_distillation);
    `timing` says how the models are timed in ONNX Runtime (threads, batch sizes), unless not `measure_latency`.
    A run doing both also writes the pruned float model
    as `pruned.pt`, which `quantize` accepts on its own.
    """
    if prune is None and quantize is None:
        raise ValueError("compress needs a PruneConfig, a QuantizeConfig or both")
    wall_start = time.perf_counter()
    image = DEFAULT_HEALING_IMAGES if image is None else image
    model = as_model(model, arch, trust_model)
    _check_changeable(model, prune, quantize)  # before open_run makes the output folder
    # Settings the model cannot honour fail before any work.
    if prune is not None and prune.drop_blocks:
        check_drop_blocks(model.module, prune.drop_blocks, torch.zeros(1, *model.input_size), prune.ignore)
    if prune is not None and prune.blocks_to_drop:
        check_named_blocks(model.module, prune.blocks_to_drop, torch.zeros(1, *model.input_size), prune.ignore)
    if quantize is not None:
        check_keep_float(model.module, quantize.keep_float)
    ctx = open_run(model, image, run, eval_data=eval_data, patch_config=patch_config, image_mode=image_mode)
    seconds = {"setup": time.perf_counter() - wall_start}  # each stage's wall time, for the report
    heal, quantize = _mixing_for_source(ctx, heal, quantize)
    config = settings(run=run, prune=prune, heal=heal if prune is not None else None, quantize=quantize,
                      **_inputs(ctx, image, image_mode, patch_config, eval_data, loss_fn, augment, hooks),
                      measure_latency=measure_latency, timing=timing)
    healing = Healing(heal, loss_fn, augment, hooks) if heal is not None else None
    student, pruned, int8, parts = ctx.student_copy(), None, None, []
    try:
        if prune is not None:
            pruned = _timed(seconds, "prune", prune_stage, ctx, student, prune, healing)
            student = pruned.student
            parts.append(pruned)
        if quantize is not None:
            int8 = _timed(seconds, "quantize", quantize_stage, ctx, student, quantize)
            parts.append(int8)
        if not distributed.is_main():  # the other ranks only helped train: rank 0 measures and writes
            return Result(student, _assemble(ctx, prune, quantize, [p for p in parts if p is not None], seconds,
                                             wall_start, config))
        parts.append(_timed(seconds, "measure", measure, ctx, student, int8))
        if ctx.out_dir is not None:
            parts.append(_timed(seconds, "export", export, ctx, student, int8, pruned is not None))
        if measure_latency:
            parts.append(_timed(seconds, "latency", latency, ctx, student, int8, pruned is not None, timing))
    except BaseException:
        ctx.abandon()
        raise
    report = _assemble(ctx, prune, quantize, parts, seconds, wall_start, config)
    _warn(report)
    ctx.write_report(report, f"compress1img {report['command']}", learnt_from=_learnt_from(prune, heal, quantize))
    final = student
    if int8 is not None and int8.reference is not None:
        final = LoadedModel(int8.reference, None, student.input_size, student.mean, student.std, student.num_classes,
                            student.classes, f"{student.source}, int8", interpolation=student.interpolation,
                            crop_pct=student.crop_pct)
    return Result(final, report, int8.onnx_bytes if int8 is not None else None)


def _mixing_for_source(ctx: RunContext, heal: DistillConfig | None, quantize: QuantizeConfig | None):
    """The trainings' "auto" mixing resolved for the images the run learns from (augment.mixing_for_source)."""
    mode = ctx.source_report["image_mode"]
    if heal is not None:
        heal = mixing_for_source(heal, mode)
    if isinstance(quantize, QATConfig):
        quantize = dataclasses.replace(quantize, training=mixing_for_source(quantize.training, mode))
    return heal, quantize


def _check_changeable(model: LoadedModel, prune: PruneConfig | None, quantize: QuantizeConfig | None) -> None:
    """A compiled program (TorchScript, torch.export, ONNX) runs, but has no layers to prune or train."""
    if model.program is None:
        return
    instead = "pass its weights with --arch (a state dict), or the nn.Module itself"
    if prune is not None:
        raise InputError(f"cannot prune {model.source}: {model.program} models run but have no layers to "
                         f"remove channels from; {instead}")
    if isinstance(quantize, QATConfig):
        raise InputError(f"cannot train {model.source} in int8: {model.program} models run but have no layers "
                         f"for quantization-aware training; use --method ptq, or {instead}")
    batch = getattr(model.module, "static_batch", None)
    if quantize is not None and batch is not None:
        raise InputError(f"cannot quantize {model.source}: it was exported for batches of exactly {batch}, and the "
                         f"int8 model is made and checked on other batch sizes; export it with a dynamic batch "
                         f"axis, or {instead}")


def _assemble(ctx: RunContext, prune, quantize, parts: list, seconds: dict, wall_start: float, config: dict) -> dict:
    command = "compress" if prune is not None and quantize is not None else "prune" if prune is not None \
        else "quantize"
    report = {"command": command, "model": ctx.teacher.source, **ctx.source_report,
              "holdout_patches": len(ctx.holdout)}
    if prune is None:  # pruning counts before and after; int8 keeps the parameters, one byte each
        report["params"], report["macs"] = _params_and_macs(ctx.teacher)
    for part in parts:
        report.update(part.report())
    wall = time.perf_counter() - wall_start
    report.update({"device": str(ctx.device), "device_name": device_name(ctx.device), "wall_seconds": wall,
                   "stage_seconds": {**seconds, "total": wall}, **provenance(command, ctx.run.seed, config)})
    report["warnings"] = quality_warnings(report) + ([report["speed_warning"]] if "speed_warning" in report else [])
    return report


def _timed(seconds: dict, name: str, stage, *args):
    """`stage(*args)`, its wall time recorded as seconds[name]."""
    started = time.perf_counter()
    try:
        return stage(*args)
    finally:
        seconds[name] = time.perf_counter() - started


def _params_and_macs(model: LoadedModel) -> tuple[int | None, int | None]:
    """Parameters and MACs per image; (None, None) for a compiled program, whose layers cannot be hooked."""
    if model.program is not None:
        return None, None
    macs, params = count(model.module.cpu().eval(), torch.zeros(1, *model.input_size))
    return params, macs


def _inputs(ctx: RunContext, image: ImageArg, image_mode: str, patch_config: PatchConfig | None, eval_data,
            loss_fn, augment, hooks) -> dict:
    """The settings of a run besides the settings classes: what it learnt from, and the code it was given."""
    images = [str(i) for i in image] if isinstance(image, (list, tuple)) else \
        str(image) if image is None or isinstance(image, (str, Path)) else type(image).__name__
    return {"image": images, "image_mode": image_mode,
            "patches": dataclasses.replace(patch_config or PatchConfig(), size=ctx.teacher.input_size[-1]),
            "eval_data": str(eval_data) if isinstance(eval_data, (str, Path)) else
            ctx.labelled.source if ctx.labelled is not None else None,
            "loss_fn": _name(loss_fn), "augment": _name(augment), "hooks": [_name(h) for h in hooks]}


def _name(code) -> str | None:
    return None if code is None else getattr(code, "__qualname__", type(code).__qualname__)


def _learnt_from(prune, heal, quantize) -> tuple[int, int] | None:
    """The patches the model learnt from, for patches.png: (batch size, batch index)."""
    if prune is not None and heal is not None:
        return heal.batch_size, 0
    if isinstance(quantize, QATConfig):
        return quantize.training.batch_size, 0
    if quantize is not None:
        return quantize.calibration_size, CALIBRATION_BATCH_INDEX
    return None  # pruned without healing or quantizing: nothing was learnt from patches


def _warn(report: dict) -> None:
    """Every warning of the report, on the console too (the CLI prints them as `warning: ...` lines)."""
    if distributed.is_main():
        for warning in report["warnings"]:
            log.warning(warning)


def build_student(name: str, teacher: LoadedModel, args: dict | None = None) -> LoadedModel:
    """A randomly initialised `name` with the teacher's classes, input size and normalisation (`args`: the
    keyword arguments of a class of one's own)."""
    module, cfg = create_model_from_name(name, num_classes=teacher.num_classes, pretrained=False, arch_args=args)
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *teacher.input_size))
    except Exception as e:
        raise InputError(f"student {name} does not accept the teacher's {'x'.join(map(str, teacher.input_size))} "
                         f"input: {first_line(e)}") from None
    if tuple(out.shape) != (2, teacher.num_classes):
        raise InputError(f"student {name} gives outputs of shape {tuple(out.shape)[1:]}, "
                         f"the teacher has {teacher.num_classes} classes")
    return LoadedModel(module=module, arch=cfg["arch"], input_size=teacher.input_size, mean=teacher.mean,
                       std=teacher.std, num_classes=teacher.num_classes, classes=teacher.classes,
                       source=f"{name} (random init)", arch_args=cfg.get("arch_args"),
                       interpolation=teacher.interpolation, crop_pct=teacher.crop_pct)


def distill(teacher: ModelLike, student: str, image: ImageArg = None, config: DistillConfig = DistillConfig(),
            *, run: RunConfig = RunConfig(), eval_data: str | Path | EvalData | None = None,
            patches_file: str | Path | None = None, patch_config: PatchConfig | None = None,
            image_mode: str = "auto", arch: str | None = None, trust_model: bool = False,
            loss_fn: LossFn | None = None, augment: Augment | None = None, hooks: Sequence[TrainingHook] = (),
            student_args: dict | None = None) -> Result:
    """Train a randomly initialised `student` (an architecture name, or a class of one's own "FILE.py:CLASS" built
    with `student_args`) from `teacher` on patches of one image.

    By default (`config.match` "auto") a student whose last feature map and classifier have the teacher's
    shapes (a CIFAR ResNet-20 from a ResNet-56) gets a copy of the teacher's classifier, frozen, and learns the
    teacher's last feature map; any other learns the teacher's softened outputs (docs/benchmarks.md,
    "From-scratch distillation").

    With `run.out`, writes `model.pt` (reloadable with `load_model`), `model.onnx`
    (verified against PyTorch), `report.json` and `report.md` there, and keeps a
    checkpoint while training so `run.resume` continues an interrupted run.
    """
    wall_start = time.perf_counter()
    teacher = as_model(teacher, arch, trust_model)
    torch.manual_seed(run.seed)  # the student's initialisation is part of the run's seed
    student_model = build_student(student, teacher, student_args)  # one that cannot be built fails now
    ctx = open_run(teacher, image, run, eval_data=eval_data, patches_file=patches_file, patch_config=patch_config,
                   image_mode=image_mode)
    seconds = {"setup": time.perf_counter() - wall_start}
    out_dir = ctx.out_dir
    config = mixing_for_source(config, ctx.source_report["image_mode"])
    try:
        if loss_fn is None:  # a loss of one's own decides what the student learns
            config = dataclasses.replace(config, match=_student_match(ctx, student_model, config.match))
        if run.resume and out_dir is not None and not (out_dir / CHECKPOINT_NAME).exists():
            if (out_dir / "report.json").exists():
                raise InputError(f"the run in {out_dir} already finished (no checkpoint to resume); "
                                 f"use --overwrite to run it again")
            log.warning(f"no checkpoint in {out_dir}: starting from step 0")
        result = _timed(seconds, "train", lambda: run_distillation(
            ctx.teacher.module, student_model.module, ctx.source, config, run, mean=ctx.teacher.mean,
            std=ctx.teacher.std, holdout=ctx.holdout, checkpoint_dir=out_dir, loss_fn=loss_fn, augment=augment,
            eval_fn=ctx.eval_fn if distributed.is_main() else None, hooks=hooks))
    except BaseException:
        ctx.abandon()
        raise
    student_model.module.cpu().eval()
    report = _distill_report(ctx, student_model, result, config)
    if not distributed.is_main():
        return Result(student_model, report)  # the other ranks only helped train: rank 0 measures and writes
    started = time.perf_counter()
    for who, loaded in (("teacher", ctx.teacher), ("student", student_model)):
        report[f"{who}_params"], report[f"{who}_macs"] = _params_and_macs(loaded)
    if ctx.labelled is not None:
        with stage(f"measuring the student on {ctx.labelled.source}", run.progress):
            student_logits = ctx.predict(student_model.module, ctx.labelled.images)
            report["student_top1"] = top1(student_logits, ctx.labelled.labels)
            report["test_agreement"] = top1(student_logits, ctx.teacher_labelled_logits().argmax(1))
    seconds["measure"] = time.perf_counter() - started
    if out_dir is not None:
        with stage("exporting model.onnx and checking it against PyTorch", run.progress):
            save_float_model(student_model, out_dir, "model")
            exported = _timed(seconds, "export", lambda: export_onnx(
                student_model.module, out_dir / "model.onnx", input_size=ctx.teacher.input_size,
                mean=ctx.teacher.mean, std=ctx.teacher.std, classes=ctx.teacher.classes,
                check_inputs=normalize(ctx.holdout[:64], ctx.teacher.mean, ctx.teacher.std)))
        report.update({"onnx_max_abs_diff": exported.max_abs_diff, "onnx_bytes": exported.size_bytes})
    wall = time.perf_counter() - wall_start
    config_report = settings(run=run, distill=config, **_inputs(ctx, image, image_mode, patch_config, eval_data,
                                                                loss_fn, augment, hooks), patches_file=patches_file)
    report.update({"wall_seconds": wall, "stage_seconds": {**seconds, "total": wall},
                   **provenance("distill", run.seed, config_report), "history": result.history})
    report["warnings"] = quality_warnings(report)
    _warn(report)
    if out_dir is not None:
        ctx.write_report(report, "compress1img distill", learnt_from=(config.batch_size, 0))
        (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return Result(student_model, report)


def _student_match(ctx: RunContext, student: LoadedModel, match: str) -> str:
    """What a new student learns. With "features" it takes a copy of the teacher's classifier, frozen, and learns
    the teacher's last feature map, which needs its own map and classifier to have the teacher's shapes; "auto"
    is "features" where they have, else "logits"."""
    if match == "logits":
        return match
    try:
        adopt_classifier(ctx.teacher.module, student.module, normalize(ctx.holdout[:2], ctx.teacher.mean,
                                                                        ctx.teacher.std))
    except InputError as e:
        if match == "features":
            raise
        log.info(f"distilling on the logits: the student cannot learn the teacher's last feature map ({first_line(e)})")
        return "logits"
    return "features"


def _distill_report(ctx: RunContext, student: LoadedModel, result, config: DistillConfig) -> dict:
    report = {"command": "distill", "teacher": ctx.teacher.source, "student": student.source,
              **ctx.source_report, "patches_file": str(ctx.patches_file) if ctx.patches_file else None,
              "patch_size": ctx.teacher.input_size[-1], "device": str(ctx.device),
              "device_name": device_name(ctx.device), "torch_threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine()}
    if ctx.labelled is not None and distributed.is_main():
        report["eval_data"] = ctx.labelled.source
        report["teacher_top1"] = top1(ctx.teacher_labelled_logits(), ctx.labelled.labels)
    # batch_size is per process; patches_seen and patches_per_second count all processes.
    report.update({"steps": result.steps, "batch_size": config.batch_size, "match": config.match,
                   "patches_seen": result.steps * result.global_batch_size, "train_seconds": result.seconds,
                   "patches_per_second": result.patches_per_second, "final_loss": result.final_loss,
                   "holdout_patches": len(ctx.holdout), "holdout_agreement": result.holdout_agreement,
                   "holdout_kl": result.holdout_kl, "processes": processes_report(result)})
    return report


def evaluate_model(model: ModelLike, data: str | Path | EvalData, *, arch: str | None = None,
                   trust_model: bool = False, batch_size: int = 256, device: str = "auto") -> dict:
    """Top-1 accuracy of a PyTorch or ONNX model on labelled data (`model` as for every command: a path, a
    LoadedModel, an nn.Module)."""
    loaded = as_model(model, arch, trust_model)
    labelled = load_labelled(data, loaded)
    logits = predict(loaded.module, labelled.images, loaded.mean, loaded.std, batch_size=batch_size,
                     device=resolve_device(device))
    num_classes, source = loaded.num_classes, loaded.source
    check_num_classes(labelled, num_classes)
    correct = int((logits.argmax(1) == labelled.labels).sum())
    return {"top1": 100.0 * correct / len(labelled.labels), "n": len(labelled.labels), "correct": correct,
            "model": source, "data": labelled.source}


def bench_onnx(files: Sequence[str | Path], timing: LatencyConfig = LatencyConfig(), *, progress: bool = True) -> dict:
    """ONNX files timed against each other in one run of ONNX Runtime, as the reports time their models: in
    interleaved rounds (A, B, A, B, ...) so that drift in the machine's speed hits all alike, the median kept.

    Returns {"threads", "rounds", "models": [{"file", "b1_ms", ..., "speedup_b1", ...}]}: milliseconds per
    forward pass of each batch size in `timing.batches`, and the first file's time over each file's.
    """
    if not files:
        raise InputError("bench needs at least one ONNX file")
    sizes = []
    for path in files:
        if Path(path).suffix.lower() != ".onnx":
            raise InputError(f"bench times ONNX files: {path} is not one")
        if not Path(path).is_file():
            raise InputError(f"ONNX file not found: {path}")
        graph = OnnxModule(Path(path).read_bytes())
        fixed = graph.static_batch
        if fixed is not None and any(batch != fixed for batch in timing.batches):
            raise InputError(f"{path} takes batches of exactly {fixed} only: time it with --batches {fixed}")
        if None in graph.input_shape[1:] or len(graph.input_shape) != 4:
            raise InputError(f"{path} does not take fixed-size NCHW images (input shape {graph.input_shape})")
        sizes.append(tuple(graph.input_shape[1:]))
    if len(set(sizes)) > 1:
        raise InputError("the files take inputs of different sizes (" + ", ".join(
            f"{path}: {'x'.join(map(str, size))}" for path, size in zip(files, sizes)) + "): time them separately")
    threads = timing.threads or default_threads()
    with stage(f"timing {len(files)} ONNX files", progress):
        times = compare_latency({str(i): Path(path) for i, path in enumerate(files)}, sizes[0], timing.batches,
                                rounds=timing.rounds, threads=threads)
    first = times["0"]
    rows = [{"file": str(path), **times[str(i)],
             **{f"speedup_b{b}": first[f"b{b}_ms"] / times[str(i)][f"b{b}_ms"] for b in timing.batches}}
            for i, path in enumerate(files)]
    return {"threads": threads, "rounds": timing.rounds, "input_size": list(sizes[0]), "models": rows}


def write_patch_file(image: str | Path, out: str | Path, *, size: int = 32, count: int = 50_000, seed: int = 0,
                     preview: str | Path | None = None, progress: bool = True) -> dict:
    """Pre-generate `count` patches of `image` into a uint8 NHWC `.npy` file (the paper's fixed set)."""
    from .patches import generate_patches, save_patches, save_preview

    if size < 8:
        raise InputError(f"--size must be at least 8 px (got {size})")
    if count < 1:
        raise InputError(f"--count must be at least 1 (got {count})")
    picture = load_image(image, min_side=min_image_side(size))
    check_writable(Path(out).parent, f"--out {out}")
    if preview is not None:
        check_writable(Path(preview).parent, f"--preview {preview}")
    started = time.perf_counter()
    array = generate_patches(picture, count, PatchConfig(size=size), seed=seed, progress=progress)
    seconds = time.perf_counter() - started
    save_patches(array, out)
    if preview is not None:
        save_preview(array[:128], preview)
    return {"image": str(resolve_image(image)), "out": str(out), "count": count, "size": size, "seed": seed,
            "seconds": seconds, "patches_per_second": count / seconds if seconds > 0 else float("nan"),
            "bytes": Path(out).stat().st_size, "preview": str(preview) if preview else None}


def score_images(images: list[str | Path], teacher: ModelLike | None = None, *, arch: str | None = None,
                 trust_model: bool = False, patches: int | None = None, seed: int = 0, device: str = "auto",
                 preview: str | Path | None = None, classes: list[str] | None = None,
                 progress: bool = True) -> list[dict]:
    """Rank candidate source images for distilling `teacher` (default: the bundled one), best first.

    Each entry has `rank`, `image` (as given), `score` (higher is better) and the
    label-free predictors it is made of (see `compress1img.scoring`). `classes` names the
    teacher's classes in the previews when the model does not record them.
    """
    images = expand_sets(images)  # a set is scored image by image
    for image in images:  # every name is checked before minutes of work on the first
        if image != NOISE_IMAGE:
            resolve_image(image)
    if patches is not None and patches < 2:
        raise InputError(f"--patches must be at least 2 (got {patches})")
    loaded = bundled_teacher() if teacher is None else as_model(teacher, arch, trust_model)
    if classes is not None:
        if len(classes) != loaded.num_classes:
            raise InputError(f"--classes names {len(classes)} classes, the teacher has {loaded.num_classes}")
        loaded.classes = list(classes)
    preview_dir = Path(preview).parent if preview is not None else None
    created = preview_dir is not None and not preview_dir.exists()
    if preview_dir is not None:
        check_writable(preview_dir, f"--preview {preview}")
    try:
        rows = scoring.score_images(images, loaded, patches=patches, seed=seed, device=resolve_device(device),
                                    preview=preview, progress=progress)
    except BaseException:
        if created:
            remove_if_empty(preview_dir)
        raise
    ranked = sorted(rows, key=lambda row: -row["score"])
    return [{"rank": rank, **row} for rank, row in enumerate(ranked, 1)]


def demo(out: str | Path = "compress1img-demo", *, steps: int = 300, overwrite: bool = False,
         device: str = "auto", progress: bool = True) -> Result:
    """The main job on the bundled teacher and pictures: remove half the parameters, heal, export."""
    every = max(steps // 4, 1)
    run = RunConfig(out=Path(out), overwrite=overwrite, device=device, progress=progress, holdout_size=512,
                    eval_every=every, checkpoint_every=every)
    return prune(bundled_teacher(), DEFAULT_HEALING_IMAGES, PruneConfig(sparsity=0.5),
                 heal=DistillConfig(steps=steps), run=run)
