"""The stages a compression runs through, each a function of the run context that returns what it made.

    prune_stage     for k in iterations: cut (drop blocks, remove channels); repair; heal
    quantize_stage  int8 by the config's method: QATConfig trains, PTQConfig calibrates
    measure         the final model against the teacher: held-out patches, labelled data
    export          model.pt / pruned.pt / model.pt2 and the verified model.onnx
    latency         the dense, pruned and int8 ONNX models timed in one run

Each result has a `report()` with its part of report.json; api.py puts them together.
Iteration k of K prunes the copy to k/K of the budget, then heals it for about steps/K
steps; each healed iteration is saved in the work folder and training keeps its own
checkpoints there, so `resume` continues where a run stopped.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import distributed
from .augment import Augment
from .context import RunContext
from .evaluate import agreement, normalize, top1
from .errors import InputError, first_line
from .export import ExportResult, export_onnx, onnx_model_bytes
from .latency import LatencyConfig, compare_latency
from .losses import LossFn, distillation_loss
from .mimicry import keeps_feature_map
from .models import LoadedModel, load_model, save_model, save_program
from .models.transforms import DROP_BLOCK, drop_block
from .models.user import is_class_spec
from .progress import stage
from .pruning import (PruneConfig, count, drop_blocks, drop_named_blocks, fold_masks, least_within_budget,
                      make_prunable, prune_to_budget, sparsify, weight_sparsity)
from .quantization import (PTQConfig, QATConfig, QuantizeConfig, calibrate, convert, freeze_observers,
                           int8_coverage, int8_onnx_bytes, kept_float, onnx_nodes_of, onnx_runner, opset,
                           prepare_qat, ptq_onnx_bytes, runtime_ops)
from .reconstruction import default_patches, patches_per_pass, reconstruct
from .runtime import default_threads
from .training import DistillConfig, TrainingHook, processes_report, run_distillation

log = logging.getLogger("compress1img")

# Taylor importance is measured on one fixed batch, beyond any index training reaches;
# PTQ calibrates on another.
TAYLOR_BATCH_INDEX = 2**40
CALIBRATION_BATCH_INDEX = 2**40 + 1
RECONSTRUCTION_BATCH_INDEX = 2**41  # and the indices after it
# The int8 ONNX model must pick the same class as the int8 PyTorch model this often on held-out patches;
# a PTQ model, which has only the fp32 model to compare with, as the fp32 model this often.
INT8_MIN_AGREEMENT = 90.0
PTQ_MIN_AGREEMENT = 80.0


@dataclass
class Healing:
    """How a stage trains: the loop's settings and the extension points `run_distillation` takes."""

    config: DistillConfig
    loss_fn: LossFn | None = None
    augment: Augment | None = None
    hooks: Sequence[TrainingHook] = ()

    def run(self, ctx: RunContext, student: nn.Module, config: DistillConfig, name: str, label: str,
            patches_from_step: int = 0, **run_changes):
        return run_distillation(ctx.teacher.module, student, ctx.source, config, ctx.run_for_stage(**run_changes),
                                mean=ctx.teacher.mean, std=ctx.teacher.std, holdout=ctx.holdout,
                                checkpoint_dir=ctx.stage_dir(name), loss_fn=self.loss_fn, augment=self.augment,
                                eval_fn=ctx.eval_fn, hooks=self.hooks, label=label,
                                patches_from_step=patches_from_step)


# --- pruning ---------------------------------------------------------------------------------------------------

@dataclass
class PruneResult:
    student: LoadedModel
    config: PruneConfig
    heal_steps: int
    heal_batch_size: int
    heal_match: str | None  # what healing taught: "logits" or "features"
    params_before: int
    macs_before: int
    params_after: int
    macs_after: int
    holdout_agreement: float
    top1: float | None
    iterations: list[dict]
    dropped_blocks: list[str] = field(default_factory=list)
    weight_sparsity: float | None = None  # unstructured only
    heal_processes: dict | None = None

    def report(self) -> dict:
        c = self.config
        report = {"params_before": self.params_before, "macs_before": self.macs_before, "mode": c.mode,
                  "requested_sparsity": c.sparsity, "target": c.target, "importance": c.importance,
                  "iterations": c.iterations, "params_after": self.params_after, "macs_after": self.macs_after,
                  "params_removed": 1 - self.params_after / self.params_before,
                  "macs_removed": 1 - self.macs_after / self.macs_before}
        if self.dropped_blocks:
            report["dropped_blocks"] = self.dropped_blocks
        if self.weight_sparsity is not None:
            report["weight_sparsity"] = self.weight_sparsity
            report["speedup_note"] = ("unstructured sparsity zeroes weights but keeps every channel: dense runtimes "
                                      "such as ONNX Runtime run it no faster; only the compressed file shrinks")
        report.update({"heal_steps": self.heal_steps, "heal_batch_size": self.heal_batch_size,
                       "heal_match": self.heal_match, "pruned_holdout_agreement": self.holdout_agreement})
        if self.heal_processes is not None:
            report["heal_processes"] = self.heal_processes
        if self.top1 is not None:
            report["pruned_top1"] = self.top1
        report["per_iteration"] = self.iterations
        return report


def prune_stage(ctx: RunContext, student: LoadedModel, config: PruneConfig, healing: Healing | None) -> PruneResult:
    """Prune `student` (a copy of the teacher) to `config.sparsity` in `config.iterations` cuts, each
    followed by the repair it asks for and its share of the healing budget (none when `healing` is None)."""
    teacher, example = ctx.teacher, torch.zeros(1, *ctx.teacher.input_size)
    macs_before, params_before = count(teacher.module, example)
    structured = config.mode == "structured"
    heal = healing.config if healing is not None else DistillConfig()
    matched = None
    student.source = f"{teacher.source}, pruned"
    # A model that served as a teacher before has frozen weights; torch-pruning traces
    # its dependency graph through autograd and would find nothing to prune.
    student.module.requires_grad_(True)
    student.transforms = make_prunable(student.module) if structured else []
    taylor_loss = _taylor_loss(ctx, heal)
    student, start = _resumed(ctx, student)
    iterations, dropped, heal_processes = [], [], None
    shown = ctx.run.progress
    reference = macs_before if config.target == "macs" else params_before  # what the budget is a fraction of
    for k in range(start, config.iterations + 1):
        fraction = config.sparsity * k / config.iterations
        student.module.cpu()
        row: dict = {"iteration": k, "target_sparsity": fraction}
        of_k = f" (iteration {k} of {config.iterations})" if config.iterations > 1 else ""
        # -- cut -----------------------------------------------------------------------------------------------
        if structured and k == 1 and config.dropping:
            doing = f"dropping {config.dropping} named residual blocks" if config.blocks_to_drop else \
                f"choosing {config.drop_blocks} residual blocks to drop"
            with stage(doing, shown):
                dropped = _drop_blocks(student, config, taylor_loss, example, reference)
            row["dropped_blocks"] = dropped
        counted = "MACs" if config.target == "macs" else "parameters" if structured else "weights"
        with stage(f"pruning {fraction:.0%} of the {counted}{of_k}", shown):
            if structured:
                step = prune_to_budget(student.module, example, config, int(round(reference * (1 - fraction))),
                                       teacher.num_classes, reference=reference,
                                       loss_fn=taylor_loss if config.importance == "taylor" else None,
                                       strict=k == config.iterations)
                row.update({"allocation": step.allocation, "round_to": step.round_to, "channels": step.channels,
                            "channel_ratio": step.ratio})
            else:
                sparsify(student.module, fraction)
        with stage("measuring the pruned model", shown):
            row["holdout_agreement_after_cut"] = agreement(ctx.teacher_holdout,
                                                           ctx.predict(student.module, ctx.holdout))
            if ctx.labelled is not None:
                row["top1_after_cut"] = ctx.labelled_top1(student.module)
        # -- repair (by default only without healing: healing from the repaired model ended no better) --------------
        repair_patches = config.reconstruct_patches
        if repair_patches is None:
            repair_patches = 0 if healing is not None else default_patches(teacher.input_size[-1])
        if structured and repair_patches:
            row.update(_repair(ctx, student, repair_patches))
        # -- heal ----------------------------------------------------------------------------------------------
        healed_before = heal.steps * (k - 1) // config.iterations
        steps = heal.steps * k // config.iterations - healed_before
        if healing is not None and steps > 0:
            # A loss of the caller's own replaces the match: the report keeps what was asked ("auto" unresolved).
            matched = heal.match if healing.loss_fn is not None else _healing_match(ctx, student.module, heal.match)
            result = healing.run(ctx, student.module, dataclasses.replace(heal, steps=steps, match=matched),
                                 f"heal-{k}", f"healing{of_k}", patches_from_step=healed_before)
            row.update({"heal_steps": steps, "heal_seconds": result.seconds, "heal_match": matched,
                        "holdout_agreement_after_heal": result.holdout_agreement, "heal_history": result.history})
            heal_processes = processes_report(result)
        if not structured:
            fold_masks(student.module)
        student.module.cpu().eval()
        if ctx.work_dir is not None and distributed.is_main() and student.arch is not None:  # (resume needs it)
            save_model(student, ctx.work_dir / f"iteration-{k}.pt")
            shutil.rmtree(ctx.work_dir / f"heal-{k}", ignore_errors=True)
        iterations.append(row)

    pruned = student.module.cpu().eval()
    macs, params = count(pruned, example)
    with stage("measuring the healed model", shown and healing is not None):
        holdout_agreement = agreement(ctx.teacher_holdout, ctx.predict(pruned, ctx.holdout))
        pruned_top1 = ctx.labelled_top1(pruned) if ctx.labelled is not None else None
    return PruneResult(student=student, config=config, heal_steps=heal.steps if healing is not None else 0,
                       heal_batch_size=heal.batch_size, heal_match=matched,
                       params_before=params_before, macs_before=macs_before,
                       params_after=params, macs_after=macs, holdout_agreement=holdout_agreement,
                       top1=pruned_top1, iterations=iterations,
                       dropped_blocks=[d["block"] for d in dropped],
                       weight_sparsity=None if structured else weight_sparsity(pruned), heal_processes=heal_processes)


def _healing_match(ctx: RunContext, student: nn.Module, match: str) -> str:
    """What healing the cut `student` matches: "auto" is the teacher's last feature map where the cut kept its
    shape (the classifier reading it then is the teacher's: its outputs are never cut), else the logits."""
    if match != "auto":
        return match
    example = normalize(ctx.holdout[:2], ctx.teacher.mean, ctx.teacher.std)
    if keeps_feature_map(ctx.teacher.module, student.cpu(), example):
        return "features"
    log.info("healing on the logits: the cut changed the shape of the last feature map")
    return "logits"


def _taylor_loss(ctx: RunContext, heal: DistillConfig):
    """The distillation loss on one fixed batch of patches: what Taylor importance and block dropping rank by.
    Pruning runs on the CPU, the same in every rank (DDP then checks that the shapes agree)."""
    batch = normalize(ctx.source.batch(heal.batch_size, TAYLOR_BATCH_INDEX).cpu(), ctx.teacher.mean, ctx.teacher.std)
    with torch.no_grad():
        target = ctx.teacher.module(batch)

    def taylor_loss(model: nn.Module) -> torch.Tensor:
        return distillation_loss(model(batch), target, heal.temperature)
    return taylor_loss


def _resumed(ctx: RunContext, student: LoadedModel) -> tuple[LoadedModel, int]:
    """The last iteration an interrupted run saved, and the iteration to continue with."""
    if ctx.run.resume and ctx.work_dir is not None:
        done = sorted(ctx.work_dir.glob("iteration-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        if done:
            try:
                resumed = load_model(done[-1], trust_model=True)  # our own work file
            except InputError as e:  # a class of one's own that cannot rebuild its pruned layers
                log.warning("cannot resume from %s (%s): pruning again from the start", done[-1].name,
                            first_line(e, limit=200))
                return student, 1
            resumed.source = student.source
            return resumed, int(done[-1].stem.split("-")[1]) + 1
    return student, 1


def _drop_blocks(student: LoadedModel, config: PruneConfig, loss_fn, example: torch.Tensor,
                 reference: int) -> list[dict]:
    """Replace `config.drop_blocks` residual blocks by identities (or those `config.blocks_to_drop` names),
    recorded as transforms so the model reloads; only blocks that keep the model within the whole budget
    (`reference`: the original count) are chosen.

    Chosen by rank 0 alone: a near tie decided differently elsewhere would give ranks models that
    differ in structure but not in shapes, which DDP cannot notice."""
    main = distributed.is_main()
    # What prune_to_budget accepts at the last cut.
    keep_at_least = least_within_budget(int(round(reference * (1 - config.sparsity))), reference)
    drop, which = (drop_named_blocks, config.blocks_to_drop) if config.blocks_to_drop else \
        (drop_blocks, config.drop_blocks)
    dropped = distributed.share(drop(student.module, which, loss_fn, example, config.ignore, keep_at_least,
                                     config.target) if main else None)
    if not main:
        for row in dropped:
            drop_block(student.module, row["block"])
    student.transforms = student.transforms + [DROP_BLOCK + d["block"] for d in dropped]
    return dropped


def _repair(ctx: RunContext, student: LoadedModel, patches: int) -> dict:
    """Least-squares repair of the layers the cut left short of inputs (reconstruction.py) on `patches`
    patches, on the training device; rank 0 computes it and the other ranks copy its weights."""
    result = None
    if distributed.is_main():
        per_batch = patches_per_pass(ctx.teacher.input_size[-1])
        batches = [normalize(ctx.source.batch(min(per_batch, patches - start), RECONSTRUCTION_BATCH_INDEX + i),
                             ctx.teacher.mean, ctx.teacher.std)
                   for i, start in enumerate(range(0, patches, per_batch))]
        device = batches[0].device
        teacher_home = next(ctx.teacher.module.parameters()).device
        try:
            result = reconstruct(student.module.to(device), ctx.teacher.module.to(device), batches,
                                 progress=ctx.run.progress)
        finally:
            student.module.cpu()
            ctx.teacher.module.to(teacher_home)
    distributed.copy_from_main(student.module)
    row = {"reconstruction": distributed.share(result),
           "holdout_agreement_after_repair": agreement(ctx.teacher_holdout, ctx.predict(student.module, ctx.holdout))}
    if ctx.labelled is not None:
        row["top1_after_repair"] = ctx.labelled_top1(student.module)
    return row


# --- quantization ----------------------------------------------------------------------------------------------

@dataclass
class QuantizeResult:
    """The int8 model: its ONNX graph and, for QAT, the int8 PyTorch model it was exported from."""

    onnx_bytes: bytes
    reference: nn.Module | None
    details: dict  # the report's "quantization" section
    processes: dict | None = None

    def report(self) -> dict:
        return {"quantization": self.details, **({"qat_processes": self.processes} if self.processes else {})}


def quantize_stage(ctx: RunContext, student: LoadedModel, config: QuantizeConfig) -> QuantizeResult | None:
    """`student` in int8 by the method `config`'s type names; on rank 0 (the other ranks only help train: None)."""
    fp32 = student.module.cpu().eval()
    details = {"method": config.method, "weights": "int8 symmetric, per output channel",
               "activations": "uint8 affine, per tensor", "calibration_patches": config.calibration_size}
    if config.keep_float:
        details["kept_float"] = kept_float(fp32, config.keep_float)
    calibration = normalize(ctx.source.batch(config.calibration_size, CALIBRATION_BATCH_INDEX).cpu(),
                            ctx.teacher.mean, ctx.teacher.std)
    result = QUANTIZERS[type(config)](ctx, fp32, config, calibration, details)
    if result is not None:
        details["format"] = f"ONNX QuantizeLinear/DequantizeLinear pairs, opset {opset(result.onnx_bytes)}"
        with stage("counting the int8 operators ONNX Runtime runs", ctx.run.progress):
            details.update(int8_coverage(runtime_ops(result.onnx_bytes)))
    return result


def _ptq(ctx: RunContext, fp32: nn.Module, config: PTQConfig, calibration: torch.Tensor,
         details: dict) -> QuantizeResult | None:
    if not distributed.is_main():
        return None
    started = time.perf_counter()
    details["calibration"] = config.calibration
    with stage(f"int8 by ONNX Runtime's static quantization, calibrated on {len(calibration)} patches",
               ctx.run.progress):
        float_onnx = onnx_model_bytes(fp32, ctx.teacher.input_size)
        excluded = onnx_nodes_of(float_onnx, details.get("kept_float", ()))
        onnx_bytes = ptq_onnx_bytes(float_onnx, calibration, keep_float=excluded, method=config.calibration)
    details["calibration_seconds"] = time.perf_counter() - started
    return QuantizeResult(onnx_bytes, None, details)


def _qat(ctx: RunContext, fp32: nn.Module, config: QATConfig, calibration: torch.Tensor,
         details: dict) -> QuantizeResult | None:
    shown = ctx.run.progress
    with stage("capturing the model for quantization-aware training (torch.export)", shown):
        prepared = prepare_qat(copy.deepcopy(fp32), ctx.teacher.input_size, details.get("kept_float", ()))
    with stage(f"calibrating int8 ranges on {len(calibration)} patches", shown):
        calibrate(prepared, calibration)
    # Fake quantization simulates int8 rounding on float32 values: bf16/fp16 autocast would blur the grid,
    # and the fake-quantized graph trains as it is, uncompiled.
    result = Healing(config.training).run(ctx, prepared, config.training, "qat", "quantization-aware training",
                                          amp=False, compile=False)
    if not distributed.is_main():
        return None
    with stage("converting to int8", shown):
        freeze_observers(prepared)
        fake_quant = ctx.predict(prepared.cpu(), ctx.holdout)
        converted = convert(prepared)
        details.update({"qat_steps": config.training.steps, "qat_lr": config.training.lr,
                        "qat_batch_size": config.training.batch_size, "qat_seconds": result.seconds,
                        "qat_history": result.history,
                        "fake_quant_vs_int8_agreement": agreement(fake_quant, ctx.predict(converted, ctx.holdout))})
    with stage("exporting the int8 model to ONNX", shown):
        onnx_bytes = int8_onnx_bytes(converted, ctx.teacher.input_size)
    return QuantizeResult(onnx_bytes, converted, details, processes_report(result))


# The config's type picks the method.
QUANTIZERS = {QATConfig: _qat, PTQConfig: _ptq}


# --- the final model: measured, exported, timed ------------------------------------------------------------------

@dataclass
class Measurements:
    holdout_agreement: float
    labelled: dict = field(default_factory=dict)  # eval_data, teacher/final top-1, agreement on it

    def report(self) -> dict:
        return {"holdout_agreement": self.holdout_agreement, **self.labelled}


def measure(ctx: RunContext, student: LoadedModel, int8: QuantizeResult | None) -> Measurements:
    """The final model (the int8 ONNX graph when there is one) against the teacher."""
    with stage("measuring the final model", ctx.run.progress):
        return _measure(ctx, student, int8)


def _measure(ctx: RunContext, student: LoadedModel, int8: QuantizeResult | None) -> Measurements:
    final = onnx_runner(int8.onnx_bytes) if int8 is not None else student.module.cpu().eval()
    measured = Measurements(agreement(ctx.teacher_holdout, ctx.predict(final, ctx.holdout)))
    if ctx.labelled is not None:
        teacher_logits = ctx.teacher_labelled_logits()
        final_logits = ctx.predict(final, ctx.labelled.images)
        teacher_top1, final_top1 = top1(teacher_logits, ctx.labelled.labels), top1(final_logits, ctx.labelled.labels)
        measured.labelled = {"eval_data": ctx.labelled.source, "teacher_top1": teacher_top1,
                             "int8_top1" if int8 is not None else "pruned_top1": final_top1,
                             "final_top1": final_top1, "top1_change": final_top1 - teacher_top1,
                             "test_agreement": agreement(teacher_logits, final_logits)}
    return measured


@dataclass
class Exported:
    onnx: ExportResult
    compared_with: str | None = None  # int8 only: what the ONNX graph was verified against

    def report(self) -> dict:
        report = {"onnx_max_abs_diff": self.onnx.max_abs_diff, "onnx_bytes": self.onnx.size_bytes}
        if self.compared_with is not None:
            report.update({"onnx_top1_agreement_vs_pytorch": self.onnx.top1_agreement,
                           "onnx_compared_with": self.compared_with})
        return report


def export(ctx: RunContext, student: LoadedModel, int8: QuantizeResult | None, pruned: bool) -> Exported:
    """Write the models into the output folder; the ONNX graph only once it reproduces PyTorch."""
    with stage("exporting model.onnx and checking it against PyTorch", ctx.run.progress):
        return _export(ctx, student, int8, pruned)


def _export(ctx: RunContext, student: LoadedModel, int8: QuantizeResult | None, pruned: bool) -> Exported:
    fp32, out = student.module.cpu().eval(), ctx.out_dir
    common = dict(input_size=ctx.teacher.input_size, mean=ctx.teacher.mean, std=ctx.teacher.std,
                  classes=ctx.teacher.classes, check_inputs=normalize(ctx.holdout[:64], ctx.teacher.mean,
                                                                      ctx.teacher.std))
    if int8 is None:
        save_float_model(student, out, "model")
        return Exported(export_onnx(fp32, out / "model.onnx", **common))
    if pruned:
        save_float_model(student, out, "pruned")
    if int8.reference is not None:
        save_program(dataclasses.replace(student, module=int8.reference, arch=None,
                                         source=f"{student.source}, int8"), out / "model.pt2")
    # QAT: the ONNX graph must reproduce the int8 PyTorch model; PTQ has only the float one to compare with.
    qat = int8.reference is not None
    exported = export_onnx(int8.reference if qat else fp32, out / "model.onnx", onnx_bytes=int8.onnx_bytes,
                           tolerance=None, min_agreement=INT8_MIN_AGREEMENT if qat else PTQ_MIN_AGREEMENT, **common)
    return Exported(exported, "the int8 PyTorch model (model.pt2)" if qat
                    else "the fp32 PyTorch model (PTQ has no int8 PyTorch model)")


def save_float_model(model: LoadedModel, out: Path, stem: str) -> None:
    """`stem.pt` (a compress1img checkpoint) where the model can be rebuilt from its architecture; for a
    class of the user's own, also `stem.pt2`, a torch.export program that reloads without the user's code,
    and only that where the class cannot rebuild it (a pruned model whose code fixes its widths, a pickled
    module whose constructor arguments are unknown). Whatever happens, the run is not lost: the ONNX
    model follows."""
    own = is_class_spec(model.arch)
    if model.arch is not None:
        save_model(model, out / f"{stem}.pt")
        if own:
            try:
                load_model(out / f"{stem}.pt", model.arch)
            except InputError as e:
                (out / f"{stem}.pt").unlink()
                log.warning("%s.pt not written: %s cannot rebuild this model (%s); %s.pt2 holds it", stem,
                            model.arch, first_line(e, limit=200), stem)
    if model.arch is None or own:
        try:
            save_program(model, out / f"{stem}.pt2")
        except Exception as e:  # what torch.export raises for code it cannot capture
            held = f"{stem}.pt (with --arch {model.arch})" if (out / f"{stem}.pt").exists() else "model.onnx"
            log.warning("%s.pt2 not written: torch.export cannot capture %s (%s); %s holds the model", stem,
                        model.source, first_line(e, limit=200), held)


@dataclass
class Latency:
    timing: dict  # model name -> {"b1_ms", "b32_ms"}: a key per batch size timed
    onnx_bytes: dict  # model name -> the size of the ONNX graph timed
    int8: bool
    threads: int

    def report(self) -> dict:
        final = list(self.timing)[-1]
        report = {"latency_ms": self.timing, "latency_threads": self.threads,
                  "dense_onnx_bytes": self.onnx_bytes["dense"], "onnx_bytes_by_model": self.onnx_bytes}
        batches = [key.removesuffix("_ms") for key in self.timing["dense"]]
        for batch in batches:
            report[f"speedup_{batch}"] = self.timing["dense"][f"{batch}_ms"] / self.timing[final][f"{batch}_ms"]
            if self.int8:  # int8 against the float model it was made from
                same = "pruned" if "pruned" in self.timing else "dense"
                report[f"int8_speedup_{batch}"] = self.timing[same][f"{batch}_ms"] / self.timing["int8"][f"{batch}_ms"]
        slower = [batch for batch in batches if report.get(f"int8_speedup_{batch}", 1) < 1]
        if slower:
            report["speed_warning"] = (
                f"int8 ran slower than fp32 in ONNX Runtime on this machine at batch "
                f"{' and '.join(b[1:] for b in slower)}: float activations between the int8 convs (SiLU, hardswish, "
                f"squeeze-excitation in MobileNet/EfficientNet-style models) cost a conversion each; measure on "
                f"your target CPU and keep the fp32 model if it is faster there")
        return report


def latency(ctx: RunContext, student: LoadedModel, int8: QuantizeResult | None, pruned: bool,
            config: LatencyConfig = LatencyConfig()) -> Latency:
    """The original, the pruned and the int8 model timed against each other in one run of ONNX Runtime."""
    names = ["dense"] + ["pruned"] * pruned + ["int8"] * (int8 is not None)
    with stage(f"timing the {', '.join(names)} models in ONNX Runtime", ctx.run.progress):
        models = {"dense": onnx_model_bytes(ctx.teacher.module, ctx.teacher.input_size)}
        if pruned:
            models["pruned"] = onnx_model_bytes(student.module.cpu().eval(), ctx.teacher.input_size)
        if int8 is not None:
            models["int8"] = int8.onnx_bytes
        # Under several processes the other ranks have stopped after training: their threads are rank 0's to time with.
        threads = config.threads or default_threads() * distributed.world_size()
        timing = compare_latency(models, ctx.teacher.input_size, config.batches, rounds=config.rounds, threads=threads)
    return Latency(timing, {name: len(graph) for name, graph in models.items()}, int8 is not None, threads)
