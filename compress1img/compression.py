"""Compressing a pretrained model: it is frozen as the teacher, a copy is pruned and/or quantized
to int8, healed by distillation from the teacher on one-image patches, exported and measured
against the original.

Pruning: iteration k of K prunes the copy to k/K of the requested budget, then heals it
for about steps/K steps. Quantization ("qat") then trains the pruned copy with fake
quantization, again against the original teacher. Each healed iteration is saved in
`--out/.work/` and training keeps its own checkpoints there, so `--resume` continues
where a run stopped.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from pathlib import Path

import torch

from . import distributed
from .api import as_model, describe_image, load_labelled, patch_source, tracking_accuracy
from .evaluate import agreement, normalize, predict, top1
from .export import export_onnx, onnx_model_bytes
from .latency import compare_latency
from .models import LoadedModel, load_model, save_model, save_program
from .outputs import WORK_DIR, prepare_out_dir, remove_if_empty, write_report
from .models.transforms import DROP_BLOCK, drop_block
from .pruning import (PruneConfig, count, drop_blocks, fold_masks, make_prunable, prune_to_budget, sparsify,
                      weight_sparsity)
from .quantization import (QAT_LR, QAT_STEPS, QuantizeConfig, calibrate, convert, freeze_observers, int8_coverage,
                           int8_onnx_bytes, onnx_runner, opset, prepare_qat,
                           ptq_onnx_bytes, runtime_ops)
from .reconstruction import default_patches, patches_per_pass, reconstruct
from .training import (DistillConfig, device_name, distillation_loss, processes_report, resolve_device,
                       run_distillation)

# Taylor importance is measured on one fixed batch, beyond any index training reaches;
# PTQ calibrates on another.
TAYLOR_BATCH_INDEX = 2**40
CALIBRATION_BATCH_INDEX = 2**40 + 1
RECONSTRUCTION_BATCH_INDEX = 2**41  # and the indices after it
# The int8 ONNX model must pick the same class as the int8 PyTorch model this often on held-out patches;
# a PTQ model, which has only the fp32 model to compare with, as the fp32 model this often.
INT8_MIN_AGREEMENT = 90.0
PTQ_MIN_AGREEMENT = 80.0


def prune(model: LoadedModel | str | Path, image: str | Path | None = None, *, out: str | Path | None = None,
          config: PruneConfig | None = None, heal: DistillConfig | None = None, **options) -> dict:
    """Prune `model` to `config.sparsity` and heal it by distillation from the original; returns the report.

    `heal.steps` is the healing budget over all iterations; `healing=False` only prunes.
    With `out`, writes `model.pt` (reloads with `load_model`), `model.onnx` (verified
    against PyTorch), `report.json` and `report.md`. Other options as for `compress`.
    """
    return compress(model, image, out=out, prune=config or PruneConfig(), heal=heal, **options)


def quantize(model: LoadedModel | str | Path, image: str | Path | None = None, *, out: str | Path | None = None,
             config: QuantizeConfig | None = None, train: DistillConfig | None = None, **options) -> dict:
    """Quantize `model` to int8 (weights per channel, activations per tensor); returns the report.

    "qat" trains a fake-quantized copy to match the original on patches (`train`,
    default 500 steps at lr 1e-5); "ptq" only calibrates ONNX Runtime's quantizer on
    patches. With `out`, writes `model.onnx` (int8 QDQ, verified), `model.pt2` (the
    int8 PyTorch program, "qat" only), `report.json` and `report.md`.
    """
    return compress(model, image, out=out, quantize=config or QuantizeConfig(), train=train, **options)


def compress(model: LoadedModel | str | Path, image: str | Path | None = None, *, out: str | Path | None = None,
             prune: PruneConfig | None = None, quantize: QuantizeConfig | None = None,
             heal: DistillConfig | None = None, train: DistillConfig | None = None, eval_data=None,
             arch: str | None = None, trust_model: bool = False, overwrite: bool = False, resume: bool = False,
             healing: bool = True, progress: bool = True, measure_latency: bool = True) -> dict:
    """Prune and/or quantize `model` in one run, both healed against the original; returns one report.

    `heal` is the pruning's healing budget, `train` the quantization-aware training's.
    Outputs as for `prune` or `quantize`; a run doing both also writes the pruned
    float model as `pruned.pt`, which `quantize` accepts on its own.
    """
    if prune is None and quantize is None:
        raise ValueError("compress needs a PruneConfig, a QuantizeConfig or both")
    for config in (prune, quantize):
        if config is not None:
            config.validate()
    heal = heal or DistillConfig()
    # torch.compile is for the float model's healing; the fake-quantized graph trains as it is.
    train = train or dataclasses.replace(heal, steps=QAT_STEPS, lr=QAT_LR, compile=False)
    heal.validate()
    train.validate()
    wall_start = time.perf_counter()
    device = resolve_device(heal.device)
    distributed.init(device)  # under torchrun: pruning decisions are shared before training starts
    teacher = as_model(model, arch, trust_model)
    labelled = load_labelled(eval_data, teacher)
    source, holdout = patch_source(image, teacher.input_size[-1], heal.seed, heal.holdout_size, device=device)
    out_dir = prepare_out_dir(out, overwrite=overwrite, resume=resume) if out is not None else None
    work = out_dir / WORK_DIR if out_dir is not None else None
    eval_fn = tracking_accuracy(labelled, teacher, device) if labelled is not None else None
    teacher_holdout = predict(teacher.module, holdout, teacher.mean, teacher.std)
    example = torch.zeros(1, *teacher.input_size)
    base_macs, base_params = count(teacher.module, example)

    report: dict = {"command": _command_name(prune, quantize), "model": teacher.source,
                    "image": describe_image(image), "params_before": base_params, "macs_before": base_macs}
    student = dataclasses.replace(teacher, module=copy.deepcopy(teacher.module))
    int8 = None
    try:
        if prune is not None:
            student = _prune_stage(teacher, student, source, holdout, teacher_holdout, prune, heal, labelled,
                                   work, resume, healing, eval_fn, progress, report)
        if quantize is not None:
            int8 = _quantize_stage(teacher, student, source, holdout, teacher_holdout, quantize, train,
                                   work, resume, eval_fn, progress, report)
        if not distributed.is_main():
            return report  # the other ranks only helped train: rank 0 converts, measures and writes
        _finish(teacher, student, int8, holdout, teacher_holdout, labelled, out_dir, measure_latency, report)
    except BaseException:
        if out_dir is not None:
            remove_if_empty(out_dir)
        raise
    report["device"] = str(device)
    report["device_name"] = device_name(device)
    report["wall_seconds"] = time.perf_counter() - wall_start
    if out_dir is not None:
        write_report(out_dir, report, f"compress1img {report['command']}")
        shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)
    return report


def _command_name(prune: PruneConfig | None, quantize: QuantizeConfig | None) -> str:
    return "compress" if prune is not None and quantize is not None else "prune" if prune is not None else "quantize"


def _prune_stage(teacher: LoadedModel, student: LoadedModel, source, holdout, teacher_holdout, config: PruneConfig,
                 heal: DistillConfig, labelled, work: Path | None, resume: bool, healing: bool, eval_fn,
                 progress: bool, report: dict) -> LoadedModel:
    example = torch.zeros(1, *teacher.input_size)
    base_macs, base_params = report["macs_before"], report["params_before"]
    structured = config.mode == "structured"
    student.source = f"{teacher.source}, pruned"
    # A model that served as a teacher before has frozen weights; torch-pruning traces
    # its dependency graph through autograd and would find nothing to prune.
    student.module.requires_grad_(True)
    student.transforms = make_prunable(student.module) if structured else []

    # Pruning runs on the CPU, the same in every rank (DDP then checks that the shapes agree).
    taylor_batch = normalize(source.batch(heal.batch_size, TAYLOR_BATCH_INDEX).cpu(), teacher.mean, teacher.std)
    with torch.no_grad():
        taylor_target = teacher.module(taylor_batch)

    def taylor_loss(m: torch.nn.Module) -> torch.Tensor:
        return distillation_loss(m(taylor_batch), taylor_target, heal.temperature)

    start_iteration = 1
    if resume and work is not None:
        done = sorted(work.glob("iteration-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        if done:
            student = load_model(done[-1])
            student.source = f"{teacher.source}, pruned"
            start_iteration = int(done[-1].stem.split("-")[1]) + 1

    iterations = []
    for k in range(start_iteration, config.iterations + 1):
        fraction = config.sparsity * k / config.iterations
        student.module.cpu()
        dropped = []
        if structured and k == 1 and config.drop_blocks:
            # Chosen by rank 0 alone: a near tie decided differently elsewhere would give ranks models that
            # differ in structure but not in shapes, which DDP cannot notice.
            main = distributed.is_main()
            dropped = distributed.share(drop_blocks(student.module, config.drop_blocks, taylor_loss, example,
                                                    config.ignore) if main else None)
            if not main:
                for row in dropped:
                    drop_block(student.module, row["block"])
            student.transforms = student.transforms + [DROP_BLOCK + d["block"] for d in dropped]
            report["dropped_blocks"] = [d["block"] for d in dropped]
        if structured:
            reference = base_macs if config.target == "macs" else base_params
            step = prune_to_budget(student.module, example, config, int(round(reference * (1 - fraction))),
                                   teacher.num_classes, reference=reference,
                                   loss_fn=taylor_loss if config.importance == "taylor" else None,
                                   strict=k == config.iterations)
            layout = {"allocation": step.allocation, "round_to": step.round_to, "channels": step.channels,
                      "channel_ratio": step.ratio}
        else:
            sparsify(student.module, fraction)
            layout = {}
        cut = predict(student.module, holdout, teacher.mean, teacher.std)
        row = {"iteration": k, "target_sparsity": fraction, **layout,
               **({"dropped_blocks": dropped} if dropped else {}),
               "holdout_agreement_after_cut": agreement(teacher_holdout, cut)}
        if labelled is not None:
            row["top1_after_cut"] = top1(predict(student.module, labelled.images, teacher.mean, teacher.std),
                                         labelled.labels)
        # By default only without healing: healing from the repaired model ended no better (docs/benchmarks.md).
        repair_patches = config.reconstruct_patches
        if repair_patches is None:
            repair_patches = 0 if healing else default_patches(teacher.input_size[-1])
        if structured and repair_patches:
            row["reconstruction"] = _repair(teacher, student, source, repair_patches, progress)
            row["holdout_agreement_after_repair"] = agreement(
                teacher_holdout, predict(student.module, holdout, teacher.mean, teacher.std))
            if labelled is not None:
                row["top1_after_repair"] = top1(predict(student.module, labelled.images, teacher.mean, teacher.std),
                                                labelled.labels)
        steps = heal.steps * k // config.iterations - heal.steps * (k - 1) // config.iterations
        if healing and steps > 0:
            iteration_config = dataclasses.replace(heal, steps=steps, seed=heal.seed + k - 1)
            result = run_distillation(teacher.module, student.module, source, iteration_config,
                                      mean=teacher.mean, std=teacher.std, holdout=holdout,
                                      out_dir=work / f"heal-{k}" if work is not None else None,
                                      resume=resume, eval_fn=eval_fn, progress=progress)
            row.update({"heal_steps": steps, "heal_seconds": result.seconds,
                        "holdout_agreement_after_heal": result.holdout_agreement})
            report["heal_processes"] = processes_report(result)
        if not structured:
            fold_masks(student.module)
        student.module.cpu().eval()
        if work is not None and distributed.is_main():
            save_model(student, work / f"iteration-{k}.pt")
            shutil.rmtree(work / f"heal-{k}", ignore_errors=True)
        iterations.append(row)

    pruned = student.module.cpu().eval()
    macs, params = count(pruned, example)
    report.update({"mode": config.mode, "requested_sparsity": config.sparsity, "target": config.target,
                   "importance": config.importance, "iterations": config.iterations,
                   "params_after": params, "macs_after": macs,
                   "params_removed": 1 - params / base_params, "macs_removed": 1 - macs / base_macs})
    if not structured:
        report["weight_sparsity"] = weight_sparsity(pruned)
        report["speedup_note"] = ("unstructured sparsity zeroes weights but keeps every channel: dense runtimes "
                                  "such as ONNX Runtime run it no faster; only the compressed file shrinks")
    report["heal_steps"] = heal.steps if healing else 0
    report["heal_batch_size"] = heal.batch_size
    report["pruned_holdout_agreement"] = agreement(teacher_holdout,
                                                   predict(pruned, holdout, teacher.mean, teacher.std))
    if labelled is not None:
        report["pruned_top1"] = top1(predict(pruned, labelled.images, teacher.mean, teacher.std), labelled.labels)
    report["per_iteration"] = iterations
    return student


def _repair(teacher: LoadedModel, student: LoadedModel, source, patches: int, progress: bool) -> dict:
    """Least-squares repair of the layers the cut left short of inputs (reconstruction.py) on `patches`
    patches, on the training device; rank 0 computes it and the other ranks copy its weights."""
    result = None
    if distributed.is_main():
        per_batch = patches_per_pass(teacher.input_size[-1])
        batches = [normalize(source.batch(min(per_batch, patches - start), RECONSTRUCTION_BATCH_INDEX + i),
                             teacher.mean, teacher.std) for i, start in enumerate(range(0, patches, per_batch))]
        device = batches[0].device
        teacher_home = next(teacher.module.parameters()).device
        try:
            result = reconstruct(student.module.to(device), teacher.module.to(device), batches, progress=progress)
        finally:
            student.module.cpu()
            teacher.module.to(teacher_home)
    distributed.copy_from_main(student.module)
    return distributed.share(result)


@dataclasses.dataclass
class Int8Model:
    """The quantized result: its ONNX graph and, for QAT, the int8 PyTorch model it was exported from."""

    onnx_bytes: bytes
    reference: torch.nn.Module | None


def _quantize_stage(teacher: LoadedModel, student: LoadedModel, source, holdout, teacher_holdout,
                    config: QuantizeConfig, train: DistillConfig, work: Path | None, resume: bool, eval_fn,
                    progress: bool, report: dict) -> Int8Model | None:
    """The int8 model, on rank 0; the other ranks only take part in training and get None."""
    fp32 = student.module.cpu().eval()
    report["quantization"] = {"method": config.method, "weights": "int8 symmetric, per output channel",
                              "activations": "uint8 affine, per tensor"}
    calibration = normalize(source.batch(config.calibration_size, CALIBRATION_BATCH_INDEX).cpu(),
                            teacher.mean, teacher.std)
    report["quantization"]["calibration_patches"] = config.calibration_size
    if config.method == "ptq":
        if not distributed.is_main():
            return None
        started = time.perf_counter()
        int8 = Int8Model(ptq_onnx_bytes(onnx_model_bytes(fp32, teacher.input_size), calibration), None)
        report["quantization"]["calibration_seconds"] = time.perf_counter() - started
    else:
        prepared = prepare_qat(copy.deepcopy(fp32), teacher.input_size)
        calibrate(prepared, calibration)
        # Fake quantization simulates int8 rounding on float32 values: bf16/fp16 autocast would blur the grid.
        train = dataclasses.replace(train, amp=False)
        result = run_distillation(teacher.module, prepared, source, train, mean=teacher.mean, std=teacher.std,
                                  holdout=holdout, out_dir=work / "qat" if work is not None else None,
                                  resume=resume, eval_fn=eval_fn, progress=progress)
        report["qat_processes"] = processes_report(result)
        if not distributed.is_main():
            return None
        freeze_observers(prepared)
        fake_quant = predict(prepared.cpu(), holdout, teacher.mean, teacher.std)
        converted = convert(prepared)
        reference = predict(converted, holdout, teacher.mean, teacher.std)
        int8 = Int8Model(int8_onnx_bytes(converted, teacher.input_size), converted)
        report["quantization"].update({
            "qat_steps": train.steps, "qat_lr": train.lr, "qat_batch_size": train.batch_size,
            "qat_seconds": result.seconds, "qat_history": result.history,
            "fake_quant_vs_int8_agreement": agreement(fake_quant, reference)})
    report["quantization"]["format"] = f"ONNX QuantizeLinear/DequantizeLinear pairs, opset {opset(int8.onnx_bytes)}"
    report["quantization"].update(int8_coverage(runtime_ops(int8.onnx_bytes)))
    return int8


def _finish(teacher: LoadedModel, student: LoadedModel, int8: Int8Model | None, holdout, teacher_holdout,
            labelled, out_dir: Path | None, measure_latency: bool, report: dict) -> None:
    """Final measurements against the teacher, the exported files and the latency comparison."""
    fp32 = student.module.cpu().eval()
    run_final = onnx_runner(int8.onnx_bytes) if int8 is not None else fp32
    report["holdout_agreement"] = agreement(teacher_holdout, predict(run_final, holdout, teacher.mean, teacher.std))
    if labelled is not None:
        report["eval_data"] = labelled.source
        teacher_logits = predict(teacher.module, labelled.images, teacher.mean, teacher.std)
        final_logits = predict(run_final, labelled.images, teacher.mean, teacher.std)
        report["teacher_top1"] = top1(teacher_logits, labelled.labels)
        report["int8_top1" if int8 is not None else "pruned_top1"] = top1(final_logits, labelled.labels)
        report["final_top1"] = top1(final_logits, labelled.labels)
        report["top1_change"] = report["final_top1"] - report["teacher_top1"]
        report["test_agreement"] = agreement(teacher_logits, final_logits)
    check = normalize(holdout[:64], teacher.mean, teacher.std)
    if out_dir is not None:
        common = dict(input_size=teacher.input_size, mean=teacher.mean, std=teacher.std, classes=teacher.classes,
                      check_inputs=check)
        if int8 is None:
            save_model(student, out_dir / "model.pt")
            exported = export_onnx(fp32, out_dir / "model.onnx", **common)
        else:
            if "params_after" in report:
                save_model(student, out_dir / "pruned.pt")
            if int8.reference is not None:
                save_program(dataclasses.replace(student, module=int8.reference, arch=None,
                                                 source=f"{student.source}, int8"), out_dir / "model.pt2")
            # QAT: the ONNX graph must reproduce the int8 PyTorch model; PTQ has only the float one to compare with.
            exported = export_onnx(int8.reference if int8.reference is not None else fp32, out_dir / "model.onnx",
                                   onnx_bytes=int8.onnx_bytes, tolerance=None,
                                   min_agreement=INT8_MIN_AGREEMENT if int8.reference is not None
                                   else PTQ_MIN_AGREEMENT,
                                   **common)
            report["onnx_top1_agreement_vs_pytorch"] = exported.top1_agreement
            report["onnx_compared_with"] = ("the int8 PyTorch model (model.pt2)" if int8.reference is not None
                                            else "the fp32 PyTorch model (PTQ has no int8 PyTorch model)")
        report.update({"onnx_max_abs_diff": exported.max_abs_diff, "onnx_bytes": exported.size_bytes})
    if measure_latency:
        models = {"dense": onnx_model_bytes(teacher.module, teacher.input_size)}
        if "params_after" in report:
            models["pruned"] = onnx_model_bytes(fp32, teacher.input_size)
        if int8 is not None:
            models["int8"] = int8.onnx_bytes
        timing = compare_latency(models, teacher.input_size)
        report["latency_ms"] = timing
        report["dense_onnx_bytes"] = len(models["dense"])
        final = list(models)[-1]
        for batch in ("b1", "b32"):
            report[f"speedup_{batch}"] = timing["dense"][f"{batch}_ms"] / timing[final][f"{batch}_ms"]
            if int8 is not None:  # int8 against the float model it was made from
                same = "pruned" if "pruned" in models else "dense"
                report[f"int8_speedup_{batch}"] = timing[same][f"{batch}_ms"] / timing["int8"][f"{batch}_ms"]
        slower = [batch for batch in ("b1", "b32") if report.get(f"int8_speedup_{batch}", 1) < 1]
        if slower:
            report["speed_warning"] = (
                f"int8 ran slower than fp32 in ONNX Runtime on this machine at batch "
                f"{' and '.join(b[1:] for b in slower)}: float activations between the int8 convs (SiLU, hardswish, "
                f"squeeze-excitation in MobileNet/EfficientNet-style models) cost a conversion each; measure on "
                f"your target CPU and keep the fp32 model if it is faster there")
