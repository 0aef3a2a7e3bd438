"""The Python API under the CLI: each function is one command, returning its report as a dict."""
from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed, scoring
from .data import EvalData, check_num_classes, load_eval_data
from .errors import InputError
from .evaluate import OnnxModel, normalize, predict, top1
from .export import export_onnx
from .images import (DEFAULT_IMAGE, NOISE_IMAGE, describe_image, load_image, min_image_side, resolve_image,
                     source_picture)
from .models import LoadedModel, create_model_from_name, load_model, save_model
from .outputs import check_writable, prepare_out_dir, remove_if_empty, write_report
from .patches import PatchArray, PatchConfig, PatchGenerator
from .training import (
    CHECKPOINT_NAME,
    DistillConfig,
    accuracy_fn,
    device_name,
    processes_report,
    resolve_device,
    run_distillation,
)

log = logging.getLogger("compress1img")

# The held-out patches come from the same image under a seed training never uses.
HOLDOUT_SEED_OFFSET = 1_000_003
# During training, labelled accuracy is tracked on a strided slice this big (the full set at the end).
TRACKING_EVAL_SIZE = 1000


def patch_source(image: str | Path | None, patch_size: int, seed: int, holdout_size: int,
                 patches_file: str | Path | None = None, device: str | torch.device = "cpu"):
    """(training patches, held-out patches) from an image, or from a pre-made `.npy` patch file.

    Training batches come out on `device`: on a GPU the image pyramid lives there and every
    batch is generated there, with no per-patch work on the CPU. Held-out patches are on the CPU.
    """
    if patches_file is not None:
        path = Path(patches_file)
        if not path.is_file():
            raise InputError(f"patch file not found: {path}")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise InputError(f"cannot read patch file {path}: {e}") from None
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise InputError(f"patch file {path} must hold uint8 (N, S, S, 3) patches, not {array.dtype} {array.shape}")
        if array.shape[1] != patch_size:
            raise InputError(f"patch file {path} has {array.shape[1]} px patches, the teacher expects {patch_size} px")
        if len(array) <= holdout_size:
            raise InputError(f"patch file {path} has {len(array)} patches: need more than the {holdout_size} held out")
        # The last patches are held out and never trained on.
        holdout = torch.from_numpy(np.array(array[-holdout_size:])).permute(0, 3, 1, 2).float() / 255
        return PatchArray(np.asarray(array[:-holdout_size]), seed=seed, device=device), holdout
    picture = source_picture(image, patch_size, seed)
    config = PatchConfig(size=patch_size)
    holdout = PatchGenerator(picture, config, seed=seed + HOLDOUT_SEED_OFFSET, device=device).batch(holdout_size, 0)
    return PatchGenerator(picture, config, seed=seed, device=device), holdout.cpu()


def load_labelled(eval_data: str | Path | EvalData | None, model: LoadedModel) -> EvalData | None:
    if eval_data is None or isinstance(eval_data, EvalData):
        return eval_data
    data = load_eval_data(eval_data, image_size=model.input_size[-1])
    check_num_classes(data, model.num_classes)
    return data


def tracking_accuracy(labelled: EvalData, model: LoadedModel, device: torch.device):
    """An `eval_fn` giving top-1 on a strided ~1,000-image slice: cheap enough to run during training."""
    stride = max(1, len(labelled.labels) // TRACKING_EVAL_SIZE)
    return accuracy_fn(labelled.images[::stride], labelled.labels[::stride], model.mean, model.std, device)


def as_model(model: LoadedModel | str | Path, arch: str | None, trust_model: bool) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, arch, trust_model=trust_model)


def build_student(name: str, teacher: LoadedModel) -> LoadedModel:
    """A randomly initialised `name` with the teacher's classes, input size and normalisation."""
    module, _ = create_model_from_name(name, num_classes=teacher.num_classes, pretrained=False)
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *teacher.input_size))
    except Exception as e:
        raise InputError(f"student {name} does not accept the teacher's {'x'.join(map(str, teacher.input_size))} "
                         f"input: {str(e).splitlines()[0]}") from None
    if tuple(out.shape) != (2, teacher.num_classes):
        raise InputError(f"student {name} gives outputs of shape {tuple(out.shape)[1:]}, "
                         f"the teacher has {teacher.num_classes} classes")
    return LoadedModel(module=module, arch=name, input_size=teacher.input_size, mean=teacher.mean, std=teacher.std,
                       num_classes=teacher.num_classes, classes=teacher.classes, source=f"{name} (random init)")


def evaluate_model(model: LoadedModel | str | Path, data: str | Path | EvalData, *, arch: str | None = None,
                   trust_model: bool = False, batch_size: int = 256, device: str = "auto") -> dict:
    """Top-1 accuracy of a PyTorch or ONNX model on labelled data."""
    if not isinstance(model, LoadedModel) and str(model).lower().endswith(".onnx"):
        onnx_model = OnnxModel.load(model)
        labelled = data if isinstance(data, EvalData) else load_eval_data(data, image_size=onnx_model.input_size[-1])
        logits = predict(onnx_model, labelled.images, onnx_model.mean, onnx_model.std, batch_size=batch_size)
        num_classes, source = logits.shape[1], str(model)
    else:
        loaded = as_model(model, arch, trust_model)
        labelled = load_labelled(data, loaded)
        logits = predict(loaded.module, labelled.images, loaded.mean, loaded.std, batch_size=batch_size,
                         device=resolve_device(device))
        num_classes, source = loaded.num_classes, loaded.source
    check_num_classes(labelled, num_classes)
    correct = int((logits.argmax(1) == labelled.labels).sum())
    return {"top1": 100.0 * correct / len(labelled.labels), "n": len(labelled.labels), "correct": correct,
            "model": source, "data": labelled.source}


def distill(teacher: LoadedModel | str | Path, student: str, image: str | Path | None = None, *,
            out: str | Path | None = None, config: DistillConfig | None = None,
            eval_data: str | Path | EvalData | None = None, patches_file: str | Path | None = None,
            arch: str | None = None, trust_model: bool = False, overwrite: bool = False, resume: bool = False,
            progress: bool = True) -> dict:
    """Train a randomly initialised `student` from `teacher` on patches of one image.

    With `out`, writes `model.pt` (reloadable with `load_model`), `model.onnx`
    (verified against PyTorch), `report.json` and `report.md` there, and keeps a
    checkpoint while training so `resume=True` continues an interrupted run.
    """
    config = config or DistillConfig()
    config.validate()
    wall_start = time.perf_counter()
    device = resolve_device(config.device)
    teacher = as_model(teacher, arch, trust_model)
    labelled = load_labelled(eval_data, teacher)
    torch.manual_seed(config.seed)  # the student's initialisation is part of the run's seed
    student_model = build_student(student, teacher)
    size = teacher.input_size[-1]
    source, holdout = patch_source(image, size, config.seed, config.holdout_size, patches_file, device)
    out_dir = prepare_out_dir(out, overwrite=overwrite, resume=resume) if out is not None else None
    if resume and out_dir is not None and not (out_dir / CHECKPOINT_NAME).exists():
        if (out_dir / "report.json").exists():
            raise InputError(f"the run in {out_dir} already finished (no checkpoint to resume); "
                             f"use --overwrite to run it again")
        log.warning(f"no checkpoint in {out_dir}: starting from step 0")

    eval_fn = None
    report: dict = {"command": "distill", "teacher": teacher.source, "student": student_model.source,
                    "image": describe_image(image) if patches_file is None else None,
                    "patches_file": str(patches_file) if patches_file else None,
                    "patch_size": size, "device": str(device), "device_name": device_name(device),
                    "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    if labelled is not None and distributed.is_main():
        eval_fn = tracking_accuracy(labelled, teacher, device)
        teacher_logits = predict(teacher.module, labelled.images, teacher.mean, teacher.std, device=device)
        report["eval_data"] = labelled.source
        report["teacher_top1"] = top1(teacher_logits, labelled.labels)
    try:
        result = run_distillation(teacher.module, student_model.module, source, config, mean=teacher.mean,
                                  std=teacher.std, holdout=holdout, out_dir=out_dir, resume=resume,
                                  eval_fn=eval_fn, progress=progress)
    except BaseException:
        if out_dir is not None:
            remove_if_empty(out_dir)
        raise
    student_model.module.cpu().eval()
    # batch_size is per process; patches_seen and patches_per_second count all processes.
    report.update({"steps": result.steps, "batch_size": config.batch_size, "patches_seen": result.steps *
                   result.global_batch_size, "train_seconds": result.seconds,
                   "patches_per_second": result.patches_per_second,
                   "final_loss": result.final_loss, "holdout_patches": len(holdout),
                   "holdout_agreement": result.holdout_agreement, "holdout_kl": result.holdout_kl,
                   "processes": processes_report(result)})
    if not distributed.is_main():
        return report  # the other ranks only helped train: rank 0 measures and writes
    if labelled is not None:
        student_logits = predict(student_model.module, labelled.images, teacher.mean, teacher.std)
        report["student_top1"] = top1(student_logits, labelled.labels)
        report["test_agreement"] = top1(student_logits, teacher_logits.argmax(1))
    if out_dir is not None:
        save_model(student_model, out_dir / "model.pt")
        exported = export_onnx(student_model.module, out_dir / "model.onnx", input_size=teacher.input_size,
                               mean=teacher.mean, std=teacher.std, classes=teacher.classes,
                               check_inputs=normalize(holdout[:64], teacher.mean, teacher.std))
        report["onnx_max_abs_diff"] = exported.max_abs_diff
        report["onnx_bytes"] = exported.size_bytes
    report["wall_seconds"] = time.perf_counter() - wall_start
    report["config"] = result.config
    report["history"] = result.history
    if out_dir is not None:
        write_report(out_dir, report, "compress1img distill")
        (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return report


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


def score_images(images: list[str | Path], teacher: LoadedModel | str | Path | None = None, *,
                 arch: str | None = None, trust_model: bool = False, patches: int | None = None, seed: int = 0,
                 device: str = "auto", preview: str | Path | None = None, classes: list[str] | None = None,
                 progress: bool = True) -> list[dict]:
    """Rank candidate source images for distilling `teacher` (default: the bundled one), best first.

    Each entry has `rank`, `image` (as given), `score` (higher is better) and the
    label-free predictors it is made of (see `compress1img.scoring`). `classes` names the
    teacher's classes in the previews when the model does not record them.
    """
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


BUNDLED_TEACHER = Path(__file__).parent / "assets" / "models" / "cifar10_resnet20_akamaster.th"
BUNDLED_TEACHER_ARCH = "cifar_resnet20"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def bundled_teacher() -> LoadedModel:
    """The ResNet-20 CIFAR-10 teacher shipped with the package (BSD-2, akamaster)."""
    teacher = load_model(BUNDLED_TEACHER, BUNDLED_TEACHER_ARCH)
    teacher.classes = CIFAR10_CLASSES
    teacher.source = "bundled CIFAR-10 ResNet-20 (akamaster, BSD-2)"
    return teacher


def demo(out: str | Path = "compress1img-demo", *, steps: int = 300, overwrite: bool = False,
         device: str = "auto", progress: bool = True) -> dict:
    """The main job on the bundled teacher and image: remove half the parameters, heal, export."""
    from .pruning import PruneConfig
    from .compression import prune

    heal = DistillConfig(steps=steps, batch_size=128, eval_every=max(steps // 4, 1),
                         checkpoint_every=max(steps // 4, 1), device=device, holdout_size=512)
    return prune(bundled_teacher(), DEFAULT_IMAGE, out=out, config=PruneConfig(sparsity=0.5), heal=heal,
                 overwrite=overwrite, progress=progress)
