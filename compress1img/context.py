"""The run context: what every stage of a command works from, set up once before any stage runs.

A command (api.py) opens a `RunContext` (the teacher, the patch source and its held-out
patches, the labelled data, the output and work folders, the run settings), hands it to
its stages (stages.py), and assembles the report from what they return. Nothing here
imports the stages or the API above it.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import distributed
from .config import RunConfig
from .data import EvalData, check_num_classes, load_eval_data
from .devices import resolve_device
from .errors import InputError, first_line
from .evaluate import predict, top1
from .models import LoadedModel, load_model
from .models.loading import declared_preprocessing
from .models.user import rebuilt_spec
from .models.registry import IMAGENET_MEAN, IMAGENET_STD
from .outputs import WORK_DIR, prepare_out_dir, remove_if_empty
from .patches import PatchConfig, save_preview
from .progress import stage
from .report import PATCHES_PNG, write_report
from .sources import ImageArg, open_source
from .training import PatchSource, accuracy_fn

log = logging.getLogger("compress1img")

# During training, labelled accuracy is tracked on a strided slice this big (the full set at the end).
TRACKING_EVAL_SIZE = 1000
# Patches shown in patches.png, as the preview of score-image shows them: 8 rows of 8, each at most this many
# pixels wide (64 patches of 224 px at full size would make a PNG of several megabytes).
PATCH_GRID_SIZE = 64
PATCH_GRID_MAX_SIDE = 112

ModelLike = LoadedModel | nn.Module | str | Path


def as_model(model: ModelLike, arch: str | None = None, trust_model: bool = False) -> LoadedModel:
    """A LoadedModel from a LoadedModel, a path or name (models.load_model), or an nn.Module.

    An nn.Module must declare its input as attributes: `input_size` (3, H, W) and, unless it
    takes ImageNet-normalised input, `mean` and `std` (timm models' `pretrained_cfg` counts, and
    gives `interpolation` and `crop_pct` too), or come wrapped in a LoadedModel.
    """
    if isinstance(model, LoadedModel):
        return model
    if not isinstance(model, nn.Module):
        return load_model(model, arch, trust_model=trust_model)
    declared = declared_preprocessing(model)
    name = type(model).__name__
    size = tuple(declared.get("input_size") or ())
    if len(size) != 3:
        raise InputError(f"{name} does not declare its input size: set `{name.lower()}.input_size = (3, H, W)` "
                         f"(and .mean, .std) on the module, or pass a compress1img LoadedModel")
    if declared.get("mean") is None or declared.get("std") is None:
        log.warning("%s declares no mean/std: assuming the ImageNet normalisation", name)
    module = model.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *size))
    except Exception as e:
        raise InputError(f"{name} does not accept its declared {'x'.join(map(str, size))} input: "
                         f"{first_line(e)}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise InputError(f"{name} returns {type(out).__name__} for a batch of images, not (batch, classes) logits")
    # Recorded where its class rebuilds it: what a command makes of it then saves as model.pt too.
    spec, args = rebuilt_spec(module) or (None, None)
    return LoadedModel(module=module, arch=spec, input_size=size, mean=tuple(declared.get("mean") or IMAGENET_MEAN),
                       std=tuple(declared.get("std") or IMAGENET_STD), num_classes=int(out.shape[1]),
                       source=f"{name} (nn.Module)", arch_args=args, interpolation=declared["interpolation"],
                       crop_pct=declared["crop_pct"])


def load_labelled(eval_data: str | Path | EvalData | None, model: LoadedModel) -> EvalData | None:
    if eval_data is None or isinstance(eval_data, EvalData):
        return eval_data
    data = load_eval_data(eval_data, image_size=model.input_size[-1], interpolation=model.interpolation,
                          crop_pct=model.crop_pct)
    check_num_classes(data, model.num_classes)
    return data


def tracking_accuracy(labelled: EvalData, model: LoadedModel, device: torch.device):
    """An `eval_fn` giving top-1 on a strided ~1,000-image slice: cheap enough to run during training."""
    stride = max(1, len(labelled.labels) // TRACKING_EVAL_SIZE)
    return accuracy_fn(labelled.images[::stride], labelled.labels[::stride], model.mean, model.std, device)


@dataclass
class RunContext:
    """Everything the stages of one command share; made by `open_run`."""

    teacher: LoadedModel
    run: RunConfig
    device: torch.device
    source: PatchSource
    holdout: torch.Tensor  # float NCHW in [0, 1], on the CPU, never trained on
    teacher_holdout: torch.Tensor  # the teacher's logits on them
    labelled: EvalData | None
    source_report: dict  # what the report says the patches came from (sources.Source.describe)
    out_dir: Path | None
    patches_file: Path | None = None  # the pre-made patches the source reads, if any
    eval_fn: Callable[[nn.Module], dict] | None = None
    _teacher_labelled: torch.Tensor | None = field(default=None, repr=False)

    @property
    def work_dir(self) -> Path | None:
        """Where stages keep what --resume needs; removed when the run has written its results."""
        return self.out_dir / WORK_DIR if self.out_dir is not None else None

    def stage_dir(self, name: str) -> Path | None:
        return self.work_dir / name if self.work_dir is not None else None

    def predict(self, model, images: torch.Tensor) -> torch.Tensor:
        """Logits of `model` (a module or an ONNX runner) on [0, 1] images, in the teacher's normalisation."""
        return predict(model, images, self.teacher.mean, self.teacher.std)

    def teacher_labelled_logits(self) -> torch.Tensor:
        if self._teacher_labelled is None:
            self._teacher_labelled = self.predict(self.teacher.module, self.labelled.images)
        return self._teacher_labelled

    def labelled_top1(self, model) -> float:
        return top1(self.predict(model, self.labelled.images), self.labelled.labels)

    def student_copy(self) -> LoadedModel:
        """A copy of the teacher for a stage to change."""
        return dataclasses.replace(self.teacher, module=copy.deepcopy(self.teacher.module))

    def run_for_stage(self, **changes) -> RunConfig:
        return dataclasses.replace(self.run, **changes)

    def abandon(self) -> None:
        """After a failure: leave no empty output folder behind."""
        if self.out_dir is not None:
            remove_if_empty(self.out_dir)

    def save_patch_grid(self, path: Path, batch_size: int, index: int) -> None:
        """The first patches of batch `index` of `batch_size` (what a stage learnt from, before the loop's flips,
        shifts and mixing) as a PNG grid, each labelled with the teacher's top-1 class."""
        shown = self.source.batch(batch_size, index)[:PATCH_GRID_SIZE].cpu()
        # Labelled data names the teacher's classes too: its labels are the teacher's output indices.
        names = self.teacher.classes or (self.labelled.classes if self.labelled is not None else None) or \
            [f"class {i}" for i in range(self.teacher.num_classes)]
        labels = [names[i] for i in self.predict(self.teacher.module, shown).argmax(1).tolist()]
        if shown.shape[-1] > PATCH_GRID_MAX_SIDE:
            shown = torch.nn.functional.interpolate(shown, size=PATCH_GRID_MAX_SIDE, mode="area")
        save_preview(shown, path, ncol=8, labels=labels, scale=max(1, 64 // shown.shape[-1]))

    def write_report(self, report: dict, title: str, learnt_from: tuple[int, int] | None = None) -> None:
        """The report goes last: once it is there, the run is complete and its work folder can go.
        `learnt_from` (batch size, batch index): the batch of patches to show in patches.png."""
        if self.out_dir is not None:
            if learnt_from is not None:
                self.save_patch_grid(self.out_dir / PATCHES_PNG, *learnt_from)
            write_report(self.out_dir, report, title, patch_grid=learnt_from is not None)
            shutil.rmtree(self.out_dir / WORK_DIR, ignore_errors=True)


def open_run(model: ModelLike, image: ImageArg, run: RunConfig, *,
             eval_data: str | Path | EvalData | None = None, patches_file: str | Path | None = None,
             patch_config: PatchConfig | None = None, image_mode: str = "auto", arch: str | None = None,
             trust_model: bool = False) -> RunContext:
    """Check and load every input of a run, then create its output folder: bad input fails before any work."""
    device = resolve_device(run.device)
    distributed.init(device)  # under torchrun: decisions are shared between processes from here on
    teacher = as_model(model, arch, trust_model)
    with stage(f"loading {eval_data}", run.progress):
        labelled = load_labelled(eval_data, teacher)
    # The output folder is checked before the held-out patches take their seconds; with --overwrite, which
    # removes an earlier run's results, only once the images have loaded.
    out_dir = None
    if run.out is not None and not run.overwrite:
        out_dir = prepare_out_dir(run.out, resume=run.resume)
    try:
        with stage("making the held-out patches", run.progress):
            source = open_source(image, teacher.input_size[-1], run.seed, run.holdout_size, device=device,
                                 patch_config=patch_config, mode=image_mode, patches_file=patches_file)
            teacher_holdout = predict(teacher.module, source.holdout, teacher.mean, teacher.std)
    except BaseException:
        if out_dir is not None:
            remove_if_empty(out_dir)
        raise
    if run.out is not None and run.overwrite:
        out_dir = prepare_out_dir(run.out, overwrite=True, resume=run.resume)
    eval_fn = tracking_accuracy(labelled, teacher, device) if labelled is not None else None
    return RunContext(teacher=teacher, run=run, device=device, source=source.train, holdout=source.holdout,
                      teacher_holdout=teacher_holdout, labelled=labelled, source_report=source.describe(),
                      out_dir=out_dir,
                      patches_file=Path(patches_file) if patches_file is not None else None,
                      eval_fn=eval_fn)
