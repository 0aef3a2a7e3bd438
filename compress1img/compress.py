"""Compressing a pretrained model: it is frozen as the teacher, a copy is pruned and healed on
one-image patches, exported and measured against the original.

Iteration k of K prunes the copy to k/K of the requested budget, then heals it for
about steps/K steps. Each healed iteration is saved in `--out/.work/` and healing
keeps its own checkpoint there, so `--resume` continues where a run stopped.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from pathlib import Path

import torch

from .api import as_model, describe_image, load_labelled, patch_source, tracking_accuracy
from .evaluate import agreement, normalize, predict, top1
from .export import export_onnx, onnx_model_bytes
from .latency import compare_latency
from .models import LoadedModel, load_model, save_model
from .outputs import prepare_out_dir, remove_if_empty, write_report
from .pruning import PruneConfig, count, fold_masks, make_prunable, prune_to_budget, sparsify, weight_sparsity
from .training import DistillConfig, distillation_loss, resolve_device, run_distillation

WORK_DIR = ".work"
# Taylor importance is measured on one fixed batch, beyond any index training reaches.
TAYLOR_BATCH_INDEX = 2**40


def prune(model: LoadedModel | str | Path, image: str | Path | None = None, *, out: str | Path | None = None,
          config: PruneConfig | None = None, heal: DistillConfig | None = None, eval_data=None,
          arch: str | None = None, trust_model: bool = False, overwrite: bool = False, resume: bool = False,
          healing: bool = True, progress: bool = True, measure_latency: bool = True) -> dict:
    """Prune `model` to `config.sparsity` and heal it by distillation from the original; returns the report.

    `heal.steps` is the healing budget over all iterations; `healing=False` only prunes.
    With `out`, writes `model.pt` (reloads with `load_model`), `model.onnx` (verified
    against PyTorch), `report.json` and `report.md`.
    """
    config = config or PruneConfig()
    config.validate()
    heal = heal or DistillConfig()
    heal.validate()
    wall_start = time.perf_counter()
    device = resolve_device(heal.device)
    teacher = as_model(model, arch, trust_model)
    labelled = load_labelled(eval_data, teacher)
    source, holdout = patch_source(image, teacher.input_size[-1], heal.seed, heal.holdout_size)
    out_dir = prepare_out_dir(out, overwrite=overwrite, resume=resume) if out is not None else None
    work = out_dir / WORK_DIR if out_dir is not None else None

    example = torch.zeros(1, *teacher.input_size)
    base_macs, base_params = count(teacher.module, example)
    structured = config.mode == "structured"
    student = dataclasses.replace(teacher, module=copy.deepcopy(teacher.module), source=f"{teacher.source}, pruned")
    student.transforms = make_prunable(student.module) if structured else []

    teacher_holdout = predict(teacher.module, holdout, teacher.mean, teacher.std)
    taylor_batch = normalize(source.batch(heal.batch_size, TAYLOR_BATCH_INDEX), teacher.mean, teacher.std)
    with torch.no_grad():
        taylor_target = teacher.module(taylor_batch)

    def taylor_loss(m: torch.nn.Module) -> torch.Tensor:
        return distillation_loss(m(taylor_batch), taylor_target, heal.temperature)

    eval_fn = tracking_accuracy(labelled, teacher, device) if labelled is not None else None

    start_iteration = 1
    if resume and work is not None:
        done = sorted(work.glob("iteration-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        if done:
            student = load_model(done[-1])
            student.source = f"{teacher.source}, pruned"
            start_iteration = int(done[-1].stem.split("-")[1]) + 1

    iterations = []
    try:
        for k in range(start_iteration, config.iterations + 1):
            fraction = config.sparsity * k / config.iterations
            student.module.cpu()
            if structured:
                reference = base_macs if config.target == "macs" else base_params
                step = prune_to_budget(student.module, example, config, int(round(reference * (1 - fraction))),
                                       teacher.num_classes, reference=reference,
                                       loss_fn=taylor_loss if config.importance == "taylor" else None,
                                       strict=k == config.iterations)
                layout = {"allocation": step.allocation, "round_to": step.round_to, "channel_ratio": step.ratio}
            else:
                sparsify(student.module, fraction)
                layout = {}
            cut = predict(student.module, holdout, teacher.mean, teacher.std)
            row = {"iteration": k, "target_sparsity": fraction, **layout,
                   "holdout_agreement_after_cut": agreement(teacher_holdout, cut)}
            if labelled is not None:
                row["top1_after_cut"] = top1(predict(student.module, labelled.images, teacher.mean, teacher.std),
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
            if not structured:
                fold_masks(student.module)
            student.module.cpu().eval()
            if work is not None:
                save_model(student, work / f"iteration-{k}.pt")
                shutil.rmtree(work / f"heal-{k}", ignore_errors=True)
            iterations.append(row)
    except BaseException:
        if out_dir is not None:
            remove_if_empty(out_dir)
        raise

    pruned = student.module.cpu().eval()
    macs, params = count(pruned, example)
    report: dict = {
        "command": "prune", "model": teacher.source, "mode": config.mode, "image": describe_image(image),
        "requested_sparsity": config.sparsity, "target": config.target, "importance": config.importance,
        "iterations": config.iterations, "params_before": base_params, "params_after": params,
        "macs_before": base_macs, "macs_after": macs,
        "params_removed": 1 - params / base_params, "macs_removed": 1 - macs / base_macs,
    }
    if not structured:
        report["weight_sparsity"] = weight_sparsity(pruned)
        report["speedup_note"] = ("unstructured sparsity zeroes weights but keeps every channel: dense runtimes "
                                  "such as ONNX Runtime run it no faster; only the compressed file shrinks")
    final_holdout = predict(pruned, holdout, teacher.mean, teacher.std)
    report["holdout_agreement"] = agreement(teacher_holdout, final_holdout)
    report["heal_steps"] = heal.steps if healing else 0
    report["heal_batch_size"] = heal.batch_size
    report["device"] = str(device)
    if labelled is not None:
        report["eval_data"] = labelled.source
        teacher_logits = predict(teacher.module, labelled.images, teacher.mean, teacher.std)
        pruned_logits = predict(pruned, labelled.images, teacher.mean, teacher.std)
        report["teacher_top1"] = top1(teacher_logits, labelled.labels)
        report["pruned_top1"] = top1(pruned_logits, labelled.labels)
        report["top1_change"] = report["pruned_top1"] - report["teacher_top1"]
        report["test_agreement"] = agreement(teacher_logits, pruned_logits)
    check = normalize(holdout[:64], teacher.mean, teacher.std)
    if out_dir is not None:
        save_model(student, out_dir / "model.pt")
        exported = export_onnx(pruned, out_dir / "model.onnx", input_size=teacher.input_size, mean=teacher.mean,
                               std=teacher.std, classes=teacher.classes, check_inputs=check)
        report.update({"onnx_max_abs_diff": exported.max_abs_diff, "onnx_bytes": exported.size_bytes})
    if measure_latency:
        dense = onnx_model_bytes(teacher.module, teacher.input_size)
        small = onnx_model_bytes(pruned, teacher.input_size)
        timing = compare_latency({"dense": dense, "pruned": small}, teacher.input_size)
        report["latency_ms"] = timing
        report["dense_onnx_bytes"] = len(dense)
        for batch in ("b1", "b32"):
            report[f"speedup_{batch}"] = timing["dense"][f"{batch}_ms"] / timing["pruned"][f"{batch}_ms"]
    report["wall_seconds"] = time.perf_counter() - wall_start
    report["per_iteration"] = iterations
    if out_dir is not None:
        write_report(out_dir, report, "compress1img prune")
        shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)
    return report
