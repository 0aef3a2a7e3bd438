"""The `compress1img` command: a thin layer over `compress1img.api`.

Exit codes: 0 success, 2 bad input or usage, 1 anything else, 130 interrupted.
Errors are one line; `--debug` (anywhere on the command line) shows the traceback.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import tomllib
import typer

from . import api, distributed
from .errors import Compress1imgError, InputError
from .quantization import QAT_LR, QAT_STEPS
from .scoring import PREDICTORS
from .training import DistillConfig, TrainingInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Compress or distil a pretrained image model using one image instead of its training data.")

log = logging.getLogger("compress1img")


def _load_recipe(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """`--recipe FILE`: a TOML table of option values (names as in --help, - or _) used as defaults."""
    if value is None:
        return value
    try:
        recipe = tomllib.loads(Path(value).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"recipe not found: {value}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
        raise InputError(f"recipe {value} is not valid TOML: {e}") from None
    recipe = recipe.get(ctx.info_name, recipe)  # a recipe may hold one table per command
    known = {p.name for p in ctx.command.params}
    values = {}
    for key, item in recipe.items():
        name = key.replace("-", "_")
        if name not in known or name == "recipe":
            raise InputError(f"recipe {value}: unknown option {key!r} for `{ctx.info_name}`")
        values[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


# Options shared by the commands, declared once so every command explains them the same way.
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", help="Architecture of a bare weights file: a registry name (cifar_resnet20/32/44/56, wrn_16_4, "
                   "wrn_40_4), timm:NAME or tv:NAME.")]
ImageOpt = Annotated[Optional[str], typer.Option(
    "--image", help="Source image (JPEG/PNG/WebP/TIFF/BMP) or a bundled image name "
                    "(china [default], astronaut, coffee, chelsea, hubble).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output directory (report.json, report.md, model.pt, "
                                                              "model.onnx).")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Training steps (the healing/training budget).")]
BatchOpt = Annotated[int, typer.Option(
    "--batch-size", help="Patches per step and per process (teacher and student see the same): N processes "
                         "(--nproc N or torchrun) train on N x this many per step, each on its own patches.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate (cosine schedule after warm-up).")]
TempOpt = Annotated[float, typer.Option("--temperature", help="Softmax temperature T of the KL loss (paper: 8).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for patches, augmentation and initialisation.")]
EvalDataOpt = Annotated[Optional[Path], typer.Option(
    "--eval-data", help="Labelled data for top-1 accuracy: .npz (images uint8 NHWC + labels) or an ImageFolder "
                        "directory. Without it, only agreement with the teacher on held-out patches is reported.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from the checkpoints it left in "
                                                          "--out (same options).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the results of an earlier run in --out.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto (cuda when present; under torchrun "
                                                         "each process takes the GPU of its local rank).")]
AmpOpt = Annotated[bool, typer.Option(
    "--amp/--no-amp", help="Train in mixed precision where the hardware has it: bf16 (or fp16) on GPUs, bf16 on "
                           "CPUs with native bf16 (AVX512-BF16/AMX: 1.79x faster steps measured), with channels_last; "
                           "other CPUs train in float32. Quantization-aware training always runs in float32.")]
LrScalingOpt = Annotated[str, typer.Option(
    "--lr-scaling", help="With N processes the batch per step is N times larger: none keeps --lr (default), "
                         "sqrt multiplies it by sqrt(N), linear by N. The report gives the lr used.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the student before training: faster steps on GPUs after a compile of a "
                      "minute or so; rarely worth it on a CPU.")]
RecipeOpt = Annotated[Optional[Path], typer.Option(
    "--recipe", is_eager=True, callback=_load_recipe,
    help="TOML file of option values (see recipes/); options given on the command line win.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-model", help="Allow loading a fully pickled model. Pickles can run arbitrary code: only for files "
                          "you made yourself.")]
InputSizeOpt = Annotated[Optional[int], typer.Option(
    "--input-size", help="Input side in pixels, for models that do not record it (TorchScript, torch.export, "
                         "pickles); overrides what the model records.")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Normalisation mean as R,G,B (e.g. 0.485,0.456,0.406) when the model does not record it.")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", help="Normalisation std as R,G,B (e.g. 0.229,0.224,0.225) when the model does not record it.")]
CheckpointEveryOpt = Annotated[int, typer.Option("--checkpoint-every", help="Save a resumable checkpoint every N "
                                                                          "training steps.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the Python traceback on errors.")]
NprocOpt = Annotated[int, typer.Option(
    "--nproc", help="Train in N processes on this machine (one per GPU on cuda, gloo on CPUs), as `torchrun "
                    "--nproc-per-node N -m compress1img ...` does: distill, prune, quantize, compress, demo. "
                    "--batch-size is per process.")]


@app.callback()
def _root(debug: DebugOpt = False, nproc: NprocOpt = 1) -> None:  # both taken out of argv by main(); here for --help
    """Compress or distil a pretrained image model using one image instead of its training data."""


@app.command()
def distill(
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher: weights file (+ --arch), compress1img model.pt, "
                                                           "TorchScript / torch.export file, or a model name.")],
    student: Annotated[str, typer.Option("--student", help="Student architecture, randomly initialised: a registry "
                                                           "name, timm:NAME or tv:NAME.")],
    arch: ArchOpt = None,
    image: ImageOpt = None,
    patches: Annotated[Optional[Path], typer.Option(
        "--patches", help="Train on a pre-made patch file (from `compress1img patches`) instead of generating "
                          "patches on the fly; its last --holdout-size patches are held out.")] = None,
    out: OutOpt = None,
    steps: StepsOpt = DistillConfig.steps,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: LrOpt = DistillConfig.lr,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = DistillConfig.weight_decay,
    warmup: Annotated[float, typer.Option("--warmup", help="Fraction of the steps for linear learning-rate warm-up.")]
    = DistillConfig.warmup,
    temperature: TempOpt = DistillConfig.temperature,
    mix: Annotated[str, typer.Option("--mix", help="On-the-fly mixing of each batch: cutmix (paper's best), mixup, "
                                                   "none.")] = DistillConfig.mix,
    mix_alpha: Annotated[float, typer.Option("--mix-alpha", help="Beta(a, a) parameter of the mixing ratio.")]
    = DistillConfig.mix_alpha,
    teacher_signal: Annotated[str, typer.Option(
        "--teacher-signal", help="What the student learns from: soft (full softmax), topk (only the teacher's "
                                 "--topk largest logits), hard (argmax only).")] = DistillConfig.teacher_signal,
    topk: Annotated[int, typer.Option("--topk", help="k for --teacher-signal topk.")] = DistillConfig.topk,
    seed: SeedOpt = DistillConfig.seed,
    eval_data: EvalDataOpt = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Measure held-out agreement (and accuracy) every N "
                                                                 "steps.")] = DistillConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = DistillConfig.checkpoint_every,
    holdout_size: Annotated[int, typer.Option("--holdout-size", help="Number of fixed held-out patches for "
                                                                     "agreement/KL.")] = DistillConfig.holdout_size,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = DistillConfig.device,
    compile: CompileOpt = False,
    amp: AmpOpt = True,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
) -> None:
    """Train a student from scratch to imitate a teacher, on patches of one image."""
    config = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                           temperature=temperature, mix=mix, mix_alpha=mix_alpha, teacher_signal=teacher_signal,
                           topk=topk, seed=seed, holdout_size=holdout_size, eval_every=eval_every,
                           checkpoint_every=checkpoint_every, device=device, lr_scaling=lr_scaling,
                           compile=compile, amp=amp)
    config.validate()
    teacher_model = _load(teacher, arch, trust_model, input_size, mean, std)
    report = api.distill(teacher_model, student, image, out=out, config=config, eval_data=eval_data,
                         patches_file=patches, overwrite=overwrite, resume=resume)
    _print_summary(report, out)


ModelArg = Annotated[str, typer.Argument(help="The pretrained model: weights file (+ --arch), compress1img model.pt, "
                                              "TorchScript / torch.export file, or a model name.")]
SparsityOpt = Annotated[float, typer.Option(
    "--sparsity", help="Fraction of the model's PARAMETERS to remove, between 0 and 1 (of its MACs with "
                       "--target macs); met within 1 point and reported exactly.")]
TargetOpt = Annotated[str, typer.Option("--target", help="What --sparsity counts: params or macs.")]
ModeOpt = Annotated[str, typer.Option(
    "--mode", help="structured: remove whole channels (smaller, faster model); unstructured: zero single weights "
                   "(the paper's setting; no speed-up in dense runtimes).")]
ImportanceOpt = Annotated[str, typer.Option(
    "--importance", help="Which channels go: l2 (weight magnitude), taylor (gradient x weight of the "
                         "distillation loss on patches), bn (BatchNorm scale).")]
AllocationOpt = Annotated[str, typer.Option(
    "--allocation", help="uniform: every layer loses the same share; global: one ranking across layers; auto: "
                         "uniform when it meets the budget, else global.")]
ChannelsOpt = Annotated[str, typer.Option(
    "--channels", help="internal: prune only channels inside residual blocks, keeping the residual streams (far "
                       "less damage); all: prune the streams too (more speed per parameter removed); auto: internal "
                       "where it meets the budget, else all.")]
RoundToOpt = Annotated[Optional[int], typer.Option(
    "--round-to", help="Keep channel counts multiples of N (ragged counts run slower). Default: 8 where the "
                       "budget can be met with it, else 4, 2, 1.")]
IterationsOpt = Annotated[int, typer.Option(
    "--iterations", help="Prune in K steps, healing after each (the --steps budget is split between them).")]
IgnoreOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore", help="Layer name (as in model.named_modules()) never to prune, repeatable. The stem and the "
                     "classifier are always protected.")]
DropBlocksOpt = Annotated[int, typer.Option(
    "--drop-blocks", help="Also remove N whole residual blocks, chosen on patches as those whose removal changes "
                          "the model's outputs least; channel pruning removes the rest of --sparsity. Fewer layers "
                          "run faster than narrower ones (see docs/benchmarks.md).")]
ReconstructOpt = Annotated[Optional[int], typer.Option(
    "--reconstruct-patches", help="After each cut, refit by least squares every layer that lost input channels "
                                  "but kept its outputs, so that it reproduces the original's outputs on N patches "
                                  "(ResNet-56 at 50%: 26.5% -> 66.1% top-1 before healing; healing reached the same "
                                  "accuracy with or without it). 0: no refit. Default: with --no-heal 1024 for inputs "
                                  "up to 64 px, 256 above; else 0.")]
NoHealOpt = Annotated[bool, typer.Option("--no-heal", help="Only prune: no distillation afterwards.")]
FreezeBnOpt = Annotated[bool, typer.Option(
    "--freeze-bn-stats", help="Keep the model's BatchNorm running statistics while healing instead of "
                              "re-estimating them on patches (measured worse after pruning: see docs).")]
EvalEveryOpt = Annotated[int, typer.Option("--eval-every", help="Measure held-out agreement every N training "
                                                                "steps.")]
Int8Opt = Annotated[bool, typer.Option(
    "--int8/--no-int8", help="Quantize to int8: int8 per-channel weights, uint8 per-tensor activations, the "
                             "layout ONNX Runtime runs fastest on CPU (the only precision offered).")]
MethodOpt = Annotated[str, typer.Option(
    "--method", help="qat: quantization-aware training, the fake-quantized copy is distilled from the original on "
                     "patches; ptq: ONNX Runtime static quantization calibrated on patches, no training (faster, "
                     "less accurate; also for models torch.export cannot capture).")]
CalibrationOpt = Annotated[int, typer.Option(
    "--calibration-size", help="Patches that calibrate the activation ranges, before training (qat) or "
                               "instead of it (ptq).")]
QatStepsOpt = Annotated[int, typer.Option("--qat-steps", help="Quantization-aware training steps.")]
_QAT_LR_HELP = ("Learning rate of quantization-aware training (it starts from a trained model: keep it small; "
                "1e-4 made the loss rise).")
QatLrOpt = Annotated[float, typer.Option("--qat-lr", help=_QAT_LR_HELP)]


def _prune_config(sparsity, target, mode, importance, allocation, channels, round_to, iterations, ignore,
                  drop_blocks, reconstruct_patches):
    from .pruning import PruneConfig

    config = PruneConfig(sparsity=sparsity, target=target, mode=mode, importance=importance, allocation=allocation,
                         channels=channels, round_to=round_to, iterations=iterations, ignore=tuple(ignore or ()),
                         drop_blocks=drop_blocks, reconstruct_patches=reconstruct_patches)
    config.validate()
    return config


def _quantize_config(int8: bool, method: str, calibration_size: int):
    from .quantization import QuantizeConfig

    if not int8:
        raise InputError("int8 is the only precision compress1img quantizes to: drop --no-int8")
    config = QuantizeConfig(method=method, calibration_size=calibration_size)
    config.validate()
    return config


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
    reconstruct_patches: ReconstructOpt = None,
    no_heal: NoHealOpt = False,
    arch: ArchOpt = None,
    image: ImageOpt = None,
    out: OutOpt = None,
    steps: StepsOpt = 2000,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: LrOpt = DistillConfig.lr,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    temperature: TempOpt = DistillConfig.temperature,
    seed: SeedOpt = DistillConfig.seed,
    freeze_bn_stats: FreezeBnOpt = False,
    eval_data: EvalDataOpt = None,
    eval_every: EvalEveryOpt = DistillConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = DistillConfig.checkpoint_every,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = DistillConfig.device,
    compile: CompileOpt = False,
    amp: AmpOpt = True,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
) -> None:
    """Prune a pretrained model and heal it by distillation from the original on patches of one image."""
    from .compression import compress

    config = _prune_config(sparsity, target, mode, importance, allocation, channels, round_to, iterations,
                                  ignore, drop_blocks, reconstruct_patches)
    heal = DistillConfig(steps=max(steps, 1) if no_heal else steps, batch_size=batch_size, lr=lr,
                         temperature=temperature, seed=seed, eval_every=eval_every,
                         checkpoint_every=checkpoint_every, device=device, freeze_bn_stats=freeze_bn_stats,
                         lr_scaling=lr_scaling, compile=compile, amp=amp)
    heal.validate()
    loaded = _load(model, arch, trust_model, input_size, mean, std)
    report = compress(loaded, image, out=out, prune=config, heal=heal, eval_data=eval_data, overwrite=overwrite,
                      resume=resume, healing=not no_heal)
    _print_compress_summary(report, out)


@app.command()
def quantize(
    model: ModelArg,
    int8: Int8Opt = True,
    method: MethodOpt = "qat",
    calibration_size: CalibrationOpt = 512,
    arch: ArchOpt = None,
    image: ImageOpt = None,
    out: OutOpt = None,
    steps: StepsOpt = QAT_STEPS,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: Annotated[float, typer.Option("--lr", help=_QAT_LR_HELP)] = QAT_LR,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    temperature: TempOpt = DistillConfig.temperature,
    seed: SeedOpt = DistillConfig.seed,
    eval_data: EvalDataOpt = None,
    eval_every: EvalEveryOpt = DistillConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = DistillConfig.checkpoint_every,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = DistillConfig.device,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
) -> None:
    """Quantize a pretrained (or pruned) model to int8 for ONNX Runtime, trained against the original on patches."""
    from .compression import compress

    config = _quantize_config(int8, method, calibration_size)
    train = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, temperature=temperature, seed=seed,
                          eval_every=eval_every, checkpoint_every=checkpoint_every, device=device,
                          lr_scaling=lr_scaling)
    train.validate()
    loaded = _load(model, arch, trust_model, input_size, mean, std)
    report = compress(loaded, image, out=out, quantize=config, heal=dataclasses.replace(train, lr=DistillConfig.lr),
                      train=train, eval_data=eval_data, overwrite=overwrite, resume=resume)
    _print_compress_summary(report, out)


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
    reconstruct_patches: ReconstructOpt = None,
    method: MethodOpt = "qat",
    calibration_size: CalibrationOpt = 512,
    arch: ArchOpt = None,
    image: ImageOpt = None,
    out: OutOpt = None,
    steps: StepsOpt = 2000,
    batch_size: BatchOpt = DistillConfig.batch_size,
    lr: LrOpt = DistillConfig.lr,
    lr_scaling: LrScalingOpt = DistillConfig.lr_scaling,
    qat_steps: QatStepsOpt = QAT_STEPS,
    qat_lr: QatLrOpt = QAT_LR,
    temperature: TempOpt = DistillConfig.temperature,
    seed: SeedOpt = DistillConfig.seed,
    freeze_bn_stats: FreezeBnOpt = False,
    eval_data: EvalDataOpt = None,
    eval_every: EvalEveryOpt = DistillConfig.eval_every,
    checkpoint_every: CheckpointEveryOpt = DistillConfig.checkpoint_every,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = DistillConfig.device,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the pruned model while it heals (not "
                                                            "during quantization-aware training).")] = False,
    amp: AmpOpt = True,
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    recipe: RecipeOpt = None,
) -> None:
    """Prune, heal, then quantize to int8 in one run with one report (both stages distil from the original)."""
    from .compression import compress

    prune_config = _prune_config(sparsity, target, mode, importance, allocation, channels, round_to, iterations,
                                  ignore, drop_blocks, reconstruct_patches)
    quantize_config = _quantize_config(int8, method, calibration_size)
    heal = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, temperature=temperature, seed=seed,
                         eval_every=eval_every, checkpoint_every=checkpoint_every, device=device,
                         freeze_bn_stats=freeze_bn_stats, lr_scaling=lr_scaling, compile=compile, amp=amp)
    train = dataclasses.replace(heal, steps=qat_steps, lr=qat_lr, compile=False)
    heal.validate()
    train.validate()
    loaded = _load(model, arch, trust_model, input_size, mean, std)
    report = compress(loaded, image, out=out, prune=prune_config, quantize=quantize_config, heal=heal, train=train,
                      eval_data=eval_data, overwrite=overwrite, resume=resume)
    _print_compress_summary(report, out)


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="PyTorch model (weights + --arch, model.pt, TorchScript, torch.export) "
                                              "or an ONNX file.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled data: .npz (images uint8 NHWC + labels) or an "
                                                      "ImageFolder directory.")],
    arch: ArchOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object as the last line.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 256,
    device: DeviceOpt = "auto",
    trust_model: TrustOpt = False,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Top-1 accuracy of a PyTorch or ONNX model on labelled data."""
    if not model.lower().endswith(".onnx"):  # ONNX files carry their preprocessing in their metadata
        model = _load(model, arch, trust_model, input_size, mean, std)
    result = api.evaluate_model(model, data, batch_size=batch_size, device=device)
    if as_json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1']:.2f}% ({result['correct']}/{result['n']}) of {result['model']} on {result['data']}")


@app.command("score-image")
def score_image(
    images: Annotated[list[str], typer.Argument(help="Candidate source images (files or bundled names: china, "
                                                     "astronaut, coffee, chelsea, hubble; noise for comparison).")],
    teacher: Annotated[Optional[str], typer.Option(
        "--teacher", help="The model to be distilled or compressed: weights file (+ --arch), compress1img model.pt, "
                          "TorchScript / torch.export file, or a model name. Default: the bundled CIFAR-10 "
                          "ResNet-20.")] = None,
    arch: ArchOpt = None,
    patches: Annotated[Optional[int], typer.Option(
        "--patches", help="Patches per image. Default: 2048 for inputs up to 64 px, 512 above (a 224 px teacher "
                          "costs ~50x more per patch).")] = None,
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
    names = _read_lines(classes, "--classes") if classes is not None else None
    loaded = _load(teacher, arch, trust_model, input_size, mean, std) if teacher is not None else None
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
    steps: Annotated[int, typer.Option("--steps", help="Healing steps (a few minutes on 2 CPU cores).")] = 300,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Prune the bundled CIFAR-10 ResNet-20 by half, heal it on the bundled image, export it: no downloads."""
    if distributed.is_main():  # rank 0 speaks for the run
        print(f"demo: removing 50% of the parameters of {api.bundled_teacher().source}, healing it for {steps} steps "
              f"on patches of the bundled image '{api.DEFAULT_IMAGE}', exporting to {out}/")
    report = api.demo(out=out, steps=steps, overwrite=overwrite, device=device)
    _print_compress_summary(report, out)


@app.command("models")
def list_models_() -> None:
    """List the architectures of compress1img's own registry (timm:NAME and tv:NAME work too)."""
    from .models import get_entry, list_models

    for name in list_models():
        entry = get_entry(name)
        print(f"{name:16s} input {'x'.join(map(str, entry.input_size))}, {entry.num_classes} classes")


def _load(model: str, arch: str | None, trust_model: bool, input_size: int | None, mean: str | None,
          std: str | None):
    from .models import load_model

    return load_model(model, arch, trust_model=trust_model, input_size=input_size, mean=_floats(mean, "--mean"),
                      std=_floats(std, "--std"))


def _read_lines(path: Path, option: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {option} {path}: {getattr(e, 'strerror', None) or e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{option} takes three comma-separated numbers like 0.485,0.456,0.406 (got {text!r})") \
            from None


def _print_compress_summary(report: dict, out: Path | None) -> None:
    if not distributed.is_main():  # rank 0 speaks for the run
        return
    lines = [f"{report['command']}: {report['model']}"]
    if "weight_sparsity" in report:  # unstructured: nothing is removed, weights are zeroed
        lines.append(f"  {100 * report['weight_sparsity']:.1f}% of the conv/linear weights zeroed "
                     f"({report['requested_sparsity'] * 100:.0f}% asked); parameter and MAC counts unchanged")
    elif "params_after" in report:
        lines.append(f"  params {report['params_before']:,} -> {report['params_after']:,} "
                     f"({100 * report['params_removed']:.1f}% removed, {report['requested_sparsity'] * 100:.0f}% "
                     f"asked), MACs {report['macs_before']:,} -> {report['macs_after']:,} "
                     f"({100 * report['macs_removed']:.1f}% removed); healed {report['heal_steps']} steps")
    if report.get("dropped_blocks"):
        lines.append(f"  blocks dropped (replaced by identities): {', '.join(report['dropped_blocks'])}")
    if "quantization" in report:
        q = report["quantization"]
        how = f"{q['qat_steps']} steps of quantization-aware training" if q["method"] == "qat" else \
            f"calibrated on {q['calibration_patches']} patches (ptq)"
        lines.append(f"  int8, {how}; ONNX Runtime runs {q['int8_convs']} convs and {q['int8_adds']} adds in int8, "
                     f"{q['float_convs']} convs in float")
    lines.append(f"  agreement with the original on held-out patches: {report['holdout_agreement']:.1f}%")
    if "final_top1" in report:
        lines.append(f"  top-1 on {report['eval_data']}: {report['final_top1']:.2f}%, original "
                     f"{report['teacher_top1']:.2f}% ({report['top1_change']:+.2f} pt)")
    if "speedup_b32" in report:
        lines.append(f"  ONNX Runtime speed-up vs the original: {report['speedup_b1']:.2f}x at batch 1, "
                     f"{report['speedup_b32']:.2f}x at batch 32")
    if "speedup_note" in report:
        lines.append(f"  note: {report['speedup_note']}")
    if "speed_warning" in report:
        lines.append(f"  warning: {report['speed_warning']}")
    if out is not None:
        files = sorted(p.name for p in Path(out).iterdir() if p.is_file())
        lines.append(f"  wrote {', '.join(files)} in {out}")
    print("\n".join(lines))


def _print_summary(report: dict, out: Path | None) -> None:
    if not distributed.is_main():  # rank 0 speaks for the run
        return
    processes = report["processes"]
    batch = (f"{report['batch_size']} patches" if processes["world_size"] == 1 else
             f"{processes['global_batch']} patches ({processes['world_size']} processes x {report['batch_size']})")
    lines = [f"{report['command']}: {report['student']} from {report['teacher']}",
             f"  {report['steps']} steps x {batch} in {report['train_seconds']:.0f} s "
             f"({report['patches_per_second']:.0f} patches/s)",
             f"  agreement with the teacher on {report['holdout_patches']} held-out patches: "
             f"{report['holdout_agreement']:.1f}% (KL {report['holdout_kl']:.3f})"]
    if "student_top1" in report:
        lines.append(f"  top-1 on {report['eval_data']}: student {report['student_top1']:.2f}%, "
                     f"teacher {report['teacher_top1']:.2f}%")
    if out is not None:
        lines.append(f"  wrote {out}/model.pt, {out}/model.onnx (ONNX Runtime max abs diff "
                     f"{report['onnx_max_abs_diff']:.1e}), {out}/report.md")
    print("\n".join(lines))


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _take_nproc(argv: list[str]) -> tuple[list[str], int]:
    """`--nproc N` or `--nproc=N` anywhere on the command line, like --debug; (the rest, N)."""
    rest, nproc, i = [], 1, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--nproc" or arg.startswith("--nproc="):
            value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            try:
                nproc = int(value)
            except ValueError:
                raise InputError(f"--nproc takes a number of processes (got {value!r})") from None
            if nproc < 1:
                raise InputError(f"--nproc must be at least 1 (got {nproc})")
            continue
        rest.append(arg)
        i += 1
    return rest, nproc


def _say(message: str, every_rank: bool) -> None:
    """An error line on stderr. In several processes rank 0 says what all ranks hit alike (bad input,
    Ctrl-C); anything else every rank that meets it says, naming itself."""
    if distributed.is_main():
        print(message, file=sys.stderr)
    elif every_rank:
        print(f"rank {distributed.rank()}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WarningFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if distributed.is_main() else logging.ERROR)
    log.propagate = False
    command = typer.main.get_command(app)
    try:
        argv, nproc = _take_nproc(argv)
        name = next((a for a in argv if not a.startswith("-")), None)
        if nproc > 1:
            if distributed.active():
                raise InputError("--nproc under torchrun: use one or the other")
            if name not in distributed.TRAINING_COMMANDS:
                raise InputError(f"--nproc applies to {', '.join(distributed.TRAINING_COMMANDS)}, not "
                                 f"{name or 'no command'}")
            sys.exit(distributed.launch(nproc, argv + ["--debug"] * debug, quiet=not debug))
        distributed.check_command(name)
        command.main(args=argv, prog_name="compress1img", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt, TrainingInterrupted) as e:
        if debug:
            raise
        _say(f"interrupted: {e}" if str(e) else "interrupted", every_rank=False)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors (typer's click): exit code 2, one line like ours
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _say(f"error: {' '.join(e.format_message().split())}{where}", every_rank=False)
        sys.exit(getattr(e, "exit_code", 2))
    except Compress1imgError as e:
        if debug:
            raise
        _say(f"error: {e}", every_rank=not isinstance(e, InputError))
        sys.exit(2 if isinstance(e, InputError) else 1)
    except Exception as e:
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _say(f"error: {type(e).__name__}: {first} (run again with --debug for the traceback)", every_rank=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
