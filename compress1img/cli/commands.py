"""One function per command: its options, then parse -> settings -> API call -> summary."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api, distributed
from ..config import RunConfig
from ..errors import InputError
from ..images import BUNDLED_IMAGES, BUNDLED_SETS, DEFAULT_HEALING_IMAGES
from ..latency import LatencyConfig
from ..pruning import PruneConfig
from ..quantization import METHODS, QAT_LR, QAT_STEPS, PTQConfig, QATConfig, QuantizeConfig
from ..scoring import PREDICTORS
from ..training import DistillConfig
from .options import (AllocationOpt, AmpOpt, ArchArgsOpt, ArchOpt, BatchOpt, CalibrationMethodOpt, CalibrationOpt,
    ChannelsOpt, CheckpointEveryOpt, CompileOpt, DebugOpt, DeviceOpt, DropBlockOpt, DropBlocksOpt, EmaOpt,
    EvalDataOpt, EvalEveryOpt, FreezeBnOpt, HardestOfOpt, HoldoutOpt, IgnoreOpt, ImageModeOpt, ImageOpt, Int8Opt,
    ImportanceOpt, InputSizeOpt, IterationsOpt, KeepFloatOpt, LatencyBatchesOpt, LatencyThreadsOpt, LrOpt,
    LrScalingOpt, MatchOpt, MeanOpt, MethodOpt, MixAlphaOpt, MixOpt, ModeOpt, ModelArg, NoHealOpt, OneImageOpt,
    NprocOpt, OptimizerOpt, OutOpt, OverwriteOpt, PrintConfigOpt, QatLrOpt, QatStepsOpt, RecipeOpt, ReconstructOpt,
    ResumeOpt, RoundToOpt, SeedOpt, SharpnessOpt, SparsityOpt, StdOpt, StepsOpt, TargetOpt, TempOpt, TrustOpt,
    QAT_LR_HELP, build, batch_sizes, flag, latency_config, load, packaged_recipes, read_lines, recipe_values,
    show_config)
from ..models.user import parse_args
from .summaries import print_compress_summary, print_distill_summary

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Compress or distil a pretrained image model using one image instead of its training data.")


def _print_version(asked: bool) -> None:
    if asked:
        try:
            version = importlib.metadata.version("compress1img")
        except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
            from .. import __version__ as version
        print(f"compress1img {version}")
        raise typer.Exit()


@app.callback()
def _root(debug: DebugOpt = False, nproc: NprocOpt = 1,  # both taken out of argv by main(); here for --help
          version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version of compress1img and exit.")] = False) -> None:
    """Compress or distil a pretrained image model using one image instead of its training data."""


@app.command()
def distill(
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher: weights file (+ --arch), compress1img model.pt, "
                                                           "TorchScript / torch.export / ONNX file (run as a black "
                                                           "box: only its outputs are needed), a pickled module "
                                                           "(--trust-model), a model name, or "
                                                           "bundled:cifar_resnet20.")],
    student: Annotated[str, typer.Option("--student", help="Student architecture, randomly initialised: a registry "
                                                           "name, timm:NAME, tv:NAME, hf:FOLDER, or a class of "
                                                           "your own (FILE.py:CLASS, package.module:CLASS).")],
    student_args: Annotated[Optional[str], typer.Option(
        "--student-args", help="Keyword arguments of a --student class of your own, as a JSON object "
                               "(num_classes is the teacher's where the constructor takes it).")] = None,
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    image: OneImageOpt = None,
    image_mode: ImageModeOpt = "auto",
    patches: Annotated[Optional[Path], typer.Option(
        "--patches", help="Train on a pre-made patch file (from `compress1img patches`) instead of generating "
                          "patches on the fly; its last --holdout-size patches are held out.")] = None,
    out: OutOpt = None,
    steps: StepsOpt = DistillConfig.steps,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: LrOpt = DistillConfig.lr,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    optimizer: OptimizerOpt = DistillConfig.optimizer,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay (decoupled with adamw).")]
    = DistillConfig.weight_decay,
    warmup: Annotated[float, typer.Option("--warmup", help="Fraction of the steps for linear learning-rate warm-up.")]
    = DistillConfig.warmup,
    temperature: TempOpt = DistillConfig.temperature,
    mix: MixOpt = DistillConfig.mix,
    mix_alpha: MixAlphaOpt = DistillConfig.mix_alpha,
    teacher_signal: Annotated[str, typer.Option(
        "--teacher-signal", help="What the student learns from: soft (full softmax), topk (only the teacher's "
                                 "--topk largest logits), hard (argmax only).")] = DistillConfig.teacher_signal,
    topk: Annotated[int, typer.Option("--topk", help="k for --teacher-signal topk.")] = DistillConfig.topk,
    hardest_of: HardestOfOpt = DistillConfig.hardest_of,
    match: MatchOpt = DistillConfig.match,
    ema: EmaOpt = DistillConfig.ema,
    sharpness_radius: SharpnessOpt = DistillConfig.sharpness_radius,
    seed: SeedOpt = RunConfig.seed,
    eval_data: EvalDataOpt = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Measure held-out agreement (and accuracy) every N "
                                                                 "steps.")] = RunConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = RunConfig.checkpoint_every,
    holdout_size: HoldoutOpt = RunConfig.holdout_size,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = RunConfig.device,
    compile: CompileOpt = RunConfig.compile,
    amp: AmpOpt = RunConfig.amp,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train a student from scratch to imitate a teacher, on patches of one image."""
    params = locals()
    config, run = build(DistillConfig, params), build(RunConfig, params)
    if print_config:
        show_config("distill", params)
    teacher_model = load(teacher, arch, trust_model, input_size, mean, std, arch_args)
    result = api.distill(teacher_model, student, image, config, run=run, eval_data=eval_data, patches_file=patches,
                         image_mode=image_mode, student_args=parse_args(student_args, "--student-args"))
    print_distill_summary(result.report, out)


def _prune_config(params: dict) -> PruneConfig:
    return build(PruneConfig, params, {"blocks_to_drop": "--drop-block"}, ignore=tuple(params["ignore"] or ()),
                 blocks_to_drop=tuple(params["drop_block"] or ()))


def _refuse_training_options(params: dict, command) -> None:
    """Post-training quantization does not train: a training option given to it would be ignored without a word.
    One that a recipe set is named as the recipe's, since the command line did not give it."""
    defaults, recipe = inspect.signature(command).parameters, recipe_values(params["recipe"], command.__name__)
    given = [flag(f.name) + (" (from the recipe)" if f.name in recipe and recipe[f.name] == params[f.name] else "")
             for f in dataclasses.fields(DistillConfig)
             if f.name in params and params[f.name] != defaults[f.name].default]
    if given:
        raise InputError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to --method qat: post-training "
                         "quantization (--method ptq) does not train (its option is --calibration-size)")


def _quantize_config(params: dict, training: DistillConfig) -> QuantizeConfig:
    if not params["int8"]:
        raise InputError("int8 is the only precision compress1img quantizes to: drop --no-int8")
    if params["method"] not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)} (got {params['method']!r})")
    cls = METHODS[params["method"]]
    keep_float = tuple(params["keep_float"] or ())
    if cls is QATConfig:
        if params["calibration"] != PTQConfig.calibration:
            raise InputError("--calibration applies to --method ptq: quantization-aware training learns its ranges")
        return build(cls, params, training=training, keep_float=keep_float)
    return build(cls, params, keep_float=keep_float)


@app.command()
def prune(
    model: ModelArg,
    sparsity: SparsityOpt = 0.5,
    target: TargetOpt = "params",
    mode: ModeOpt = "structured",
    importance: ImportanceOpt = "l2",
    allocation: AllocationOpt = "auto",
    channels: ChannelsOpt = "auto",
    round_to: RoundToOpt = None,
    iterations: IterationsOpt = 1,
    ignore: IgnoreOpt = None,
    drop_blocks: DropBlocksOpt = 0,
    drop_block: DropBlockOpt = None,
    reconstruct_patches: ReconstructOpt = None,
    no_heal: NoHealOpt = False,
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    image: ImageOpt = None,
    image_mode: ImageModeOpt = "auto",
    out: OutOpt = None,
    steps: StepsOpt = 2000,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: LrOpt = DistillConfig.lr,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    optimizer: OptimizerOpt = DistillConfig.optimizer,
    temperature: TempOpt = DistillConfig.temperature,
    mix: MixOpt = DistillConfig.mix,
    mix_alpha: MixAlphaOpt = DistillConfig.mix_alpha,
    seed: SeedOpt = RunConfig.seed,
    freeze_bn_stats: FreezeBnOpt = False,
    hardest_of: HardestOfOpt = DistillConfig.hardest_of,
    match: MatchOpt = DistillConfig.match,
    ema: EmaOpt = DistillConfig.ema,
    sharpness_radius: SharpnessOpt = DistillConfig.sharpness_radius,
    eval_data: EvalDataOpt = None,
    eval_every: EvalEveryOpt = RunConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = RunConfig.checkpoint_every,
    holdout_size: HoldoutOpt = RunConfig.holdout_size,
    latency_threads: LatencyThreadsOpt = None,
    latency_batches: LatencyBatchesOpt = "1,32",
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = RunConfig.device,
    compile: CompileOpt = RunConfig.compile,
    amp: AmpOpt = RunConfig.amp,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Prune a pretrained model and heal it by distillation from the original on patches of one image."""
    params = locals()
    config, run = _prune_config(params), build(RunConfig, params)
    heal = None if no_heal else build(DistillConfig, params)
    timing = latency_config(params)
    if print_config:
        show_config("prune", params)
    loaded = load(model, arch, trust_model, input_size, mean, std, arch_args)
    result = api.prune(loaded, image, config, heal=heal, run=run, eval_data=eval_data, image_mode=image_mode,
                       timing=timing)
    print_compress_summary(result.report, out)


@app.command()
def quantize(
    model: ModelArg,
    int8: Int8Opt = True,
    method: MethodOpt = "qat",
    calibration_size: CalibrationOpt = 512,
    calibration: CalibrationMethodOpt = "minmax",
    keep_float: KeepFloatOpt = None,
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    image: ImageOpt = None,
    image_mode: ImageModeOpt = "auto",
    out: OutOpt = None,
    steps: StepsOpt = QAT_STEPS,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: Annotated[float, typer.Option("--lr", help=QAT_LR_HELP)] = QAT_LR,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    temperature: TempOpt = DistillConfig.temperature,
    hardest_of: HardestOfOpt = DistillConfig.hardest_of,
    match: MatchOpt = DistillConfig.match,
    ema: EmaOpt = DistillConfig.ema,
    sharpness_radius: SharpnessOpt = DistillConfig.sharpness_radius,
    seed: SeedOpt = RunConfig.seed,
    eval_data: EvalDataOpt = None,
    eval_every: EvalEveryOpt = RunConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = RunConfig.checkpoint_every,
    holdout_size: HoldoutOpt = RunConfig.holdout_size,
    latency_threads: LatencyThreadsOpt = None,
    latency_batches: LatencyBatchesOpt = "1,32",
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = RunConfig.device,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Quantize a pretrained (or pruned) model to int8 for ONNX Runtime, trained against the original on patches."""
    params = locals()
    if method == PTQConfig.method:
        _refuse_training_options(params, quantize)
    config, run = _quantize_config(params, build(DistillConfig, params)), build(RunConfig, params)
    timing = latency_config(params)
    if print_config:
        show_config("quantize", params)
    loaded = load(model, arch, trust_model, input_size, mean, std, arch_args)
    result = api.quantize(loaded, image, config, run=run, eval_data=eval_data, image_mode=image_mode, timing=timing)
    print_compress_summary(result.report, out)


@app.command("compress")
def compress_(
    model: ModelArg,
    sparsity: SparsityOpt = 0.5,
    int8: Int8Opt = True,
    target: TargetOpt = "params",
    mode: ModeOpt = "structured",
    importance: ImportanceOpt = "l2",
    allocation: AllocationOpt = "auto",
    channels: ChannelsOpt = "auto",
    round_to: RoundToOpt = None,
    iterations: IterationsOpt = 1,
    ignore: IgnoreOpt = None,
    drop_blocks: DropBlocksOpt = 0,
    drop_block: DropBlockOpt = None,
    reconstruct_patches: ReconstructOpt = None,
    method: MethodOpt = "qat",
    calibration_size: CalibrationOpt = 512,
    calibration: CalibrationMethodOpt = "minmax",
    keep_float: KeepFloatOpt = None,
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    image: ImageOpt = None,
    image_mode: ImageModeOpt = "auto",
    out: OutOpt = None,
    steps: StepsOpt = 2000,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: LrOpt = DistillConfig.lr,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    qat_steps: QatStepsOpt = QAT_STEPS,
    qat_lr: QatLrOpt = QAT_LR,
    temperature: TempOpt = DistillConfig.temperature,
    mix: MixOpt = DistillConfig.mix,
    mix_alpha: MixAlphaOpt = DistillConfig.mix_alpha,
    seed: SeedOpt = RunConfig.seed,
    freeze_bn_stats: FreezeBnOpt = False,
    hardest_of: HardestOfOpt = DistillConfig.hardest_of,
    match: MatchOpt = DistillConfig.match,
    ema: EmaOpt = DistillConfig.ema,
    sharpness_radius: SharpnessOpt = DistillConfig.sharpness_radius,
    eval_data: EvalDataOpt = None,
    eval_every: EvalEveryOpt = RunConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = RunConfig.checkpoint_every,
    holdout_size: HoldoutOpt = RunConfig.holdout_size,
    latency_threads: LatencyThreadsOpt = None,
    latency_batches: LatencyBatchesOpt = "1,32",
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = RunConfig.device,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the pruned model while it heals (not "
                                                            "during quantization-aware training).")] = False,
    amp: AmpOpt = RunConfig.amp,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Prune, heal, then quantize to int8 in one run with one report (both stages distil from the original)."""
    params = locals()
    prune_config, run = _prune_config(params), build(RunConfig, params)
    heal = build(DistillConfig, params)
    # Quantization-aware training distils as the healing does, with its own steps and learning rate.
    training = build(DistillConfig, params, {"steps": "--qat-steps", "lr": "--qat-lr"}, steps=qat_steps, lr=qat_lr)
    quantize_config = _quantize_config(params, training)
    timing = latency_config(params)
    if print_config:
        show_config("compress", params)
    loaded = load(model, arch, trust_model, input_size, mean, std, arch_args)
    result = api.compress(loaded, image, prune=prune_config, quantize=quantize_config, heal=heal,
                          run=run, eval_data=eval_data, image_mode=image_mode, timing=timing)
    print_compress_summary(result.report, out)


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="PyTorch model (weights + --arch, model.pt, TorchScript, torch.export, "
                                              "a pickled module with --trust-model), an ONNX file (its metadata, "
                                              "or --mean/--std/--input-size, give its preprocessing), a model name "
                                              "or bundled:cifar_resnet20.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled data: .npz (images uint8 NHWC + labels) or an "
                                                      "ImageFolder directory.")],
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object as the last line.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 256,
    device: DeviceOpt = "auto",
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Top-1 accuracy of a PyTorch or ONNX model on labelled data."""
    model = load(model, arch, trust_model, input_size, mean, std, arch_args)
    result = api.evaluate_model(model, data, batch_size=batch_size, device=device)
    if as_json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1']:.2f}% ({result['correct']}/{result['n']}) of {result['model']} on {result['data']}")


@app.command("score-image")
def score_image(
    images: Annotated[list[str], typer.Argument(help=f"Candidate source images: files, bundled names "
                                                     f"({', '.join(BUNDLED_IMAGES)}; a set such as "
                                                     f"{DEFAULT_HEALING_IMAGES} is scored picture by picture), "
                                                     f"noise for comparison.")],
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="The model to be distilled or compressed: weights file (+ --arch), compress1img model.pt, "
                          "TorchScript / torch.export / ONNX file, a model name. Default: the bundled CIFAR-10 "
                          "ResNet-20 (bundled:cifar_resnet20).")] = None,
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    patches: Annotated[Optional[int], typer.Option(
        "--patches", help="Patches per image. Default: 2048 for inputs up to 64 px, 512 above (a 224 px teacher "
                          "costs far more per patch: docs/choosing-an-image.md).")] = None,
    preview: Annotated[Optional[Path], typer.Option(
        "--preview", help="Write a PNG grid of 64 patches with the teacher's top-1 class under each; with several "
                          "images, one file per image named PREVIEW-<image name>.png.")] = None,
    classes: Annotated[Optional[Path], typer.Option(
        "--classes", help="Text file with the teacher's class names, one per line, for the preview labels (models "
                          "that do not record their classes are labelled 'class N').")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranking as a JSON list of objects (rank, image, "
                                                         "score, the predictors) instead of a table.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the patches (the same for every image).")] = 0,
    device: DeviceOpt = "auto",
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Rank candidate source images for a teacher, best first, from label-free predictors.

    Each image is cut into augmented patches (as for training) and the teacher looks at them:

    \b
      score       (evenness + diversity) / 2, higher is better
      classes     share of the teacher's classes that are the top-1 class of some patch
      evenness    entropy of the histogram of top-1 classes over patches / its maximum
                  (1: all classes equally often, 0: a single class)
      confidence  mean top-1 softmax probability of the teacher
      diversity   effective rank of the teacher's penultimate features over the patches / its maximum
      density     JPEG bytes per pixel of the image at ~0.25 megapixels (detail)
      edges       share of pixels with a strong brightness gradient

    Density and edges are not in the score: noise has the most of both and teaches least.
    How well the score predicted real healing results: docs/choosing-an-image.md.
    """
    names = read_lines(classes, "--classes") if classes is not None else None
    loaded = load(teacher, arch, trust_model, input_size, mean, std, arch_args) if teacher is not None else None
    ranking = api.score_images(images, loaded, patches=patches, seed=seed, device=device, preview=preview,
                               classes=names)
    if as_json:
        print(json.dumps(ranking))
        return
    columns = ("score", *PREDICTORS)
    print(f"{'rank':>4}  " + "  ".join(f"{c:>10}" for c in columns) + "  image")
    for row in ranking:
        print(f"{row['rank']:>4}  " + "  ".join(f"{row[c]:>10.3f}" for c in columns) + f"  {row['image']}")
    if preview is not None:
        print(f"previews: {', '.join(row['preview'] for row in ranking)}")


@app.command()
def patches(
    image: Annotated[str, typer.Argument(help="Source image, or a bundled image name.")],
    out: Annotated[Path, typer.Option("--out", help="Output .npy file: uint8 (count, size, size, 3).")],
    size: Annotated[int, typer.Option("--size", help="Patch side in pixels (32 for CIFAR models, 224 for ImageNet).")]
    = 32,
    count: Annotated[int, typer.Option("--count", help="Number of patches (the paper used 50,000).")] = 50_000,
    preview: Annotated[Optional[Path], typer.Option("--preview", help="Also write a PNG grid of the first patches, "
                                                                      "to see what the model will see.")] = None,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Pre-generate a fixed set of augmented patches of one image (the paper's pipeline)."""
    for path in (out, preview):
        if path is not None and path.exists() and not overwrite:
            raise InputError(f"{path} already exists: pass --overwrite to replace it")
    result = api.write_patch_file(image, out, size=size, count=count, seed=seed, preview=preview)
    print(f"wrote {result['count']} patches of {result['size']} px from {result['image']} to {result['out']} "
          f"({result['bytes'] / 1e6:.1f} MB, {result['patches_per_second']:.0f} patches/s)"
          + (f"; preview in {result['preview']}" if result["preview"] else ""))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("compress1img-demo"),
    steps: Annotated[int, typer.Option("--steps", help="Healing steps.")] = 300,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Prune the bundled CIFAR-10 ResNet-20 by half, heal it on the bundled pictures, export it: no downloads."""
    if distributed.is_main():  # rank 0 speaks for the run
        pictures = ", ".join(BUNDLED_SETS[DEFAULT_HEALING_IMAGES])
        print(f"demo: removing 50% of the parameters of {api.bundled_teacher().source}, healing it for {steps} steps "
              f"on patches of the bundled pictures ({pictures}), exporting to {out}/")
    report = api.demo(out=out, steps=steps, overwrite=overwrite, device=device)
    print_compress_summary(report.report, out)


@app.command("models")
def list_models_() -> None:
    """List the architectures of compress1img's own registry (timm:NAME, tv:NAME, hf:FOLDER,
    timm:hf-hub:ORG/NAME and FILE.py:CLASS work too) and the pretrained models it ships (bundled:NAME, usable as
    MODEL or --teacher with no weights file)."""
    from ..models import get_entry, list_models
    from ..models.bundled import BUNDLED_MODELS, BUNDLED_PREFIX

    for name in list_models():
        entry = get_entry(name)
        print(f"{name:24s} input {'x'.join(map(str, entry.input_size))}, {entry.num_classes} classes")
    for name, (_, _, classes, description) in BUNDLED_MODELS.items():
        print(f"{BUNDLED_PREFIX + name:24s} pretrained: {description}, {len(classes)} classes")




@app.command("recipes")
def recipes_() -> None:
    """List the packaged recipes, for --recipe NAME (each is a TOML file of options; --print-config shows one
    resolved)."""
    for name, recipe in packaged_recipes().items():
        comment = []
        for line in recipe.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("# "))
        summary = " ".join(comment).split(": ")[0].split(". ")[0]
        print(f"{name:28s} {summary}")


@app.command()
def bench(
    files: Annotated[list[Path], typer.Argument(help="ONNX files to time against each other (one input size); the "
                                                     "first is the one the others' speed-ups are relative to.")],
    batches: Annotated[str, typer.Option("--batches", help="Batch sizes, comma-separated.")] = "1,32",
    threads: Annotated[Optional[int], typer.Option(
        "--threads", help="ONNX Runtime threads (intra-op). Default: as many as torch uses (every core, unless "
                          "OMP_NUM_THREADS says fewer).")] = None,
    repeats: Annotated[int, typer.Option(
        "--repeats", help="Rounds: each round times every file once, in turn, so that changes in the machine's "
                          "speed hit all files alike; the median round is kept.")] = LatencyConfig.rounds,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of the table.")] = False,
) -> None:
    """Time ONNX models against each other in ONNX Runtime: milliseconds per batch and speed-up over the first."""
    timing = build(LatencyConfig, {}, {"threads": "--threads", "batches": "--batches", "rounds": "--repeats"},
                   threads=threads, batches=batch_sizes(batches, "--batches"), rounds=repeats)
    result = api.bench_onnx(files, timing)
    if as_json:
        print(json.dumps(result))
        return
    threads = f"{result['threads']} thread" + ("s" if result["threads"] != 1 else "")
    print(f"ONNX Runtime, {threads}, median of {result['rounds']} interleaved rounds; "
          f"speed-up: the first file's time over this file's")
    header = [f"b{b} ms" for b in timing.batches] + [f"b{b} speed-up" for b in timing.batches]
    print("  ".join(f"{h:>12}" for h in header) + "  file")
    for row in result["models"]:
        cells = [f"{row[f'b{b}_ms']:>12.3f}" for b in timing.batches] + \
                [f"{row[f'speedup_b{b}']:>11.2f}x" for b in timing.batches]
        print("  ".join(cells) + f"  {row['file']}")
