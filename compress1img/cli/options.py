"""The command line's options, declared once so every command explains them the same way, and how
option values become the API's settings classes (`build`): a field's option has the field's name."""
from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..config import ConfigError
from ..errors import InputError
from ..images import BUNDLED_IMAGES, BUNDLED_SETS, DEFAULT_HEALING_IMAGES, DEFAULT_IMAGE
from ..progress import stage


def flag(field: str) -> str:
    """The option that sets a settings field: `batch_size` -> `--batch-size`."""
    return "--" + field.replace("_", "-")


def build(cls, params: dict[str, Any], flags: dict[str, str] | None = None, **values):
    """`cls(...)` from the command's option values that share a field's name (plus `values`); a bad value
    is reported under its option's name (`flags` maps the fields whose option is named otherwise)."""
    names = {f.name for f in dataclasses.fields(cls)}
    chosen = {name: params[name] for name in names if name in params}
    chosen.update(values)
    flags = flags or {}
    try:
        return cls(**chosen)
    except ConfigError as e:
        raise InputError(e.render(lambda field: flags.get(field, flag(field)))) from None


def packaged_recipes() -> dict[str, Any]:
    """The recipes shipped in the package (compress1img/recipes/NAME.toml), by name."""
    folder = resources.files("compress1img").joinpath("recipes")
    return {item.name.removesuffix(".toml"): item for item in sorted(folder.iterdir(), key=lambda i: i.name)
            if item.name.endswith(".toml")}


def recipe_text(value: Path) -> str:
    """The TOML of `--recipe VALUE`: a file, or a packaged recipe named without .toml and without a folder."""
    name = str(value)
    if Path(name).suffix == "" and Path(name).name == name and not Path(name).exists():
        recipes = packaged_recipes()
        if name not in recipes:
            raise InputError(f"no packaged recipe {name!r}: the packaged ones are {', '.join(recipes)} "
                             f"(`compress1img recipes`), or give a .toml file")
        return recipes[name].read_text(encoding="utf-8")
    return Path(value).read_text(encoding="utf-8")


def _recipe_table(value: Path, command: str) -> dict[str, Any]:
    """The recipe's options for `command` as written (a recipe may hold one table per command)."""
    recipe = tomllib.loads(recipe_text(value))
    return recipe.get(command, recipe)


def recipe_values(value: Optional[Path], command: str) -> dict[str, Any]:
    """What a recipe (checked already by load_recipe) sets for `command`, by parameter name."""
    if value is None:
        return {}
    return {key.replace("-", "_"): item for key, item in _recipe_table(value, command).items()}


def load_recipe(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """`--recipe FILE|NAME`: a TOML table of option values (names as in --help, - or _) used as defaults."""
    if value is None:
        return value
    try:
        recipe = _recipe_table(value, ctx.info_name)
    except FileNotFoundError:
        raise InputError(f"recipe not found: {value}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
        raise InputError(f"recipe {value} is not valid TOML: {e}") from None
    known = {p.name: p for p in ctx.command.params}
    values = {}
    for key, item in recipe.items():
        name = key.replace("-", "_")
        if name not in known or name == "recipe":
            raise InputError(f"recipe {value}: unknown option {key!r} for `{ctx.info_name}`")
        # A repeatable option (--image, --ignore, --drop-block) may be given one value or a list of them.
        values[name] = [item] if getattr(known[name], "multiple", False) and isinstance(item, str) else item
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


# What a printed configuration leaves out: how the settings were given, not what they are.
NOT_SETTINGS = ("recipe", "print_config")


def show_config(command: str, params: dict[str, Any]) -> None:
    """`--print-config`: the command's resolved options (recipe, then command line, then defaults) as a
    TOML recipe that `--recipe` reads back to the same options; then exit without doing anything."""
    lines = [f"# compress1img {command}: the settings of one run; run it again with --recipe FILE",
             "# (options not set, whose value is chosen when the run starts, show as comments)"]
    for name, value in params.items():
        if name in NOT_SETTINGS:
            continue
        lines.append(f"# {name} = (not set)" if value is None or value == [] else f"{name} = {toml_value(value)}")
    print("\n".join(lines))
    raise typer.Exit(0)


def toml_value(value: Any) -> str:
    """A TOML literal of an option's value: bool, number, string (or path) or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON's string escapes are TOML's


# Options shared by the commands, declared once so every command explains them the same way.
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", help="Architecture of a bare weights file (a state dict or a checkpoint dict): a registry name "
                   "(cifar_resnet20/32/44/56, wrn_16_4, wrn_40_4), timm:NAME, tv:NAME, hf:FOLDER or hf:ORG/NAME "
                   "(Hugging Face; see README), or a class of your own as "
                   "FILE.py:CLASS or package.module:CLASS (its input size, mean and std from --input-size/--mean/"
                   "--std or its input_size/mean/std attributes). Outputs of a class of your own reload with the "
                   "same --arch, or code-free from model.pt2.")]
ArchArgsOpt = Annotated[Optional[str], typer.Option(
    "--arch-args", help="Keyword arguments of the --arch class of your own, as a JSON object, e.g. "
                        "'{\"num_classes\": 100}' (num_classes is filled in from the weights where the "
                        "constructor takes it).")]
_SETS = "; ".join(f"{name}: {' + '.join(members)}" for name, members in BUNDLED_SETS.items())
_IMAGE_HELP = (f"Source image (JPEG/PNG/WebP/TIFF/BMP), a bundled image name ({', '.join(BUNDLED_IMAGES)}), a "
               f"bundled set of them ({_SETS}), or a folder of images; repeat it for several: patches are drawn "
               f"from all of them.")
ImageOpt = Annotated[Optional[list[str]], typer.Option(
    "--image", help=f"{_IMAGE_HELP} Default: {DEFAULT_HEALING_IMAGES} (together they heal a compressed model "
                    f"better than {DEFAULT_IMAGE} alone: docs/choosing-an-image.md).")]
OneImageOpt = Annotated[Optional[list[str]], typer.Option(
    "--image", help=f"{_IMAGE_HELP} Default: {DEFAULT_IMAGE}.")]
ImageModeOpt = Annotated[str, typer.Option(
    "--image-mode", help="How the source images are used: patches (the paper's augmented crops), whole (each "
                         "image resized to the model's input, with flips, shifts and CutMix only: for sets of "
                         "small images), auto (whole when several images are all too small for the paper's "
                         "crops, else patches).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output directory (report.json, report.md, model.pt, "
                                                              "model.onnx).")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Training steps (the healing/training budget).")]
BatchOpt = Annotated[int, typer.Option(
    "--batch-size", help="Patches per step and per process (teacher and student see the same): N processes "
                         "(--nproc N or torchrun) train on N x this many per step, each on its own patches.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine schedule after warm-up); SGD "
                                                  "(--optimizer sgd, where offered) wants a far larger one than "
                                                  "AdamW.")]
OptimizerOpt = Annotated[str, typer.Option(
    "--optimizer", help="adamw (the paper's) or sgd (Nesterov momentum 0.9: steps in proportion to each gradient); "
                        "give sgd its own --lr. Measured: docs/benchmarks.md, \"Healing held nearer the teacher\".")]
TempOpt = Annotated[float, typer.Option("--temperature", help="Softmax temperature T of the KL loss (paper: 8).")]
MixOpt = Annotated[str, typer.Option(
    "--mix", help="On-the-fly mixing of each batch: cutmix (the paper's best: one box cut from the reversed batch into "
                  "every image), cutmix-per-image (each image its own box, size and partner), mixup, none; auto: "
                  "cutmix-per-image where the images are used whole (--image-mode), cutmix for patches "
                  "(docs/benchmarks.md, \"The pair again\").")]
MixAlphaOpt = Annotated[Optional[float], typer.Option(
    "--mix-alpha", help="Beta(a, a) parameter of the mixing ratio. Default: 1 where the images are used whole, "
                        "0.25 (the paper's) for patches.")]
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
                           "CPUs with native bf16 (AVX512-BF16/AMX), with channels_last (docs/benchmarks.md, "
                           "\"Mixed precision on "
                           "the CPU\"); "
                           "other CPUs train in float32. Quantization-aware training always runs in float32.")]
LrScalingOpt = Annotated[str, typer.Option(
    "--lr-scaling", help="With N processes the batch per step is N times larger: none keeps --lr (default), "
                         "sqrt multiplies it by sqrt(N), linear by N. The report gives the lr used.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the student before training: faster steps on GPUs after a compile of a "
                      "minute or so; rarely worth it on a CPU.")]
RecipeOpt = Annotated[Optional[Path], typer.Option(
    "--recipe", is_eager=True, callback=load_recipe,
    help="A packaged recipe by name (`compress1img recipes` lists them) or a TOML file of option values (as "
         "--print-config writes them); options given on the command line win.")]
PrintConfigOpt = Annotated[bool, typer.Option(
    "--print-config", help="Print the settings this command would run with (the recipe's, then the command line's, "
                           "then the defaults) as a TOML recipe for --recipe, and exit without doing any work.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-model", help="Allow loading a fully pickled model. Pickles can run arbitrary code: only for files "
                          "you made yourself.")]
InputSizeOpt = Annotated[Optional[int], typer.Option(
    "--input-size", help="Input side in pixels, for models that do not record it (TorchScript, torch.export, "
                         "pickles, ONNX files without metadata, a class of your own without an input_size "
                         "attribute); overrides what the model records.")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Normalisation mean as R,G,B (e.g. 0.485,0.456,0.406); overrides what the model records (a "
                   "compress1img model.pt or ONNX file's metadata, a class's mean attribute). Where neither says, "
                   "the ImageNet mean is assumed, with a warning.")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", help="Normalisation std as R,G,B (e.g. 0.229,0.224,0.225); as --mean.")]
CheckpointEveryOpt = Annotated[int, typer.Option("--checkpoint-every", help="Save a resumable checkpoint every N "
                                                                          "training steps.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the Python traceback on errors.")]
NprocOpt = Annotated[int, typer.Option(
    "--nproc", help="Train in N processes on this machine (one per GPU on cuda, gloo on CPUs), as `torchrun "
                    "--nproc-per-node N -m compress1img ...` does: distill, prune, quantize, compress, demo. "
                    "--batch-size is per process.")]

ModelArg = Annotated[str, typer.Argument(help="The pretrained model: weights file (+ --arch), compress1img model.pt, "
                                              "TorchScript / torch.export file, a pickled module (--trust-model), "
                                              "an ONNX file (quantize --method ptq only), a model name with "
                                              "pretrained weights in the timm/torchvision cache, or "
                                              "bundled:cifar_resnet20 (shipped; `compress1img models` lists it).")]
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
                          "the model's outputs least, among those that keep the model within --sparsity; channel "
                          "pruning removes the rest of --sparsity. Fewer layers "
                          "run faster than narrower ones (see docs/benchmarks.md).")]
DropBlockOpt = Annotated[Optional[list[str]], typer.Option(
    "--drop-block", help="Remove this whole residual block (as in model.named_modules(), e.g. layer2.4), repeatable: "
                         "a layout of your own, or an earlier run's (report.json's dropped_blocks), instead of "
                         "the blocks --drop-blocks would choose on these patches. Channel pruning removes the rest "
                         "of --sparsity.")]
ReconstructOpt = Annotated[Optional[int], typer.Option(
    "--reconstruct-patches", help="After each cut, refit by least squares every layer that lost input channels "
                                  "but kept its outputs, so that it reproduces the original's outputs on N patches "
                                  "(healing ends "
                                  "no better for it: docs/benchmarks.md, \"Against the targets\"). 0: no refit. "
                                  "Default: with --no-heal 1024 for inputs "
                                  "up to 64 px, 256 above; else 0.")]
NoHealOpt = Annotated[bool, typer.Option("--no-heal", help="Only prune: no distillation afterwards.")]
FreezeBnOpt = Annotated[bool, typer.Option(
    "--freeze-bn-stats", help="Keep the model's BatchNorm running statistics while healing instead of "
                              "re-estimating them on patches (measured worse after pruning: see docs).")]
HardestOfOpt = Annotated[int, typer.Option(
    "--hardest-of", metavar="K",
    help="Draw K times the batch of patches each step and train on the patches of it that the model being trained "
         "gets most wrong (the largest KL to the teacher); 1 trains on every patch drawn. Each step then also runs "
         "both models over all K x --batch-size patches. Measured: docs/benchmarks.md, \"Harder patches\".")]
MatchOpt = Annotated[str, typer.Option(
    "--match", help="What the model being trained learns to reproduce: logits (the teacher's softened outputs, "
                    "the paper's KL) or features (the teacher's last feature map, read by the teacher's own "
                    "classifier, frozen: a pruned copy keeps it, a new student gets a copy, which needs its last "
                    "feature map and classifier to have the teacher's shapes); auto: features wherever the model "
                    "allows it, logits otherwise and when training int8. Measured: docs/benchmarks.md, "
                    "\"Matching the last feature map\" and \"From-scratch distillation\".")]
EmaOpt = Annotated[float, typer.Option(
    "--ema", metavar="DECAY",
    help="Keep a moving average of the weights while training and return it instead of the last weights: its "
         "decay d, in [0, 1), averages over about the last 1 / (1 - d) steps; 0 returns the last weights. Measured: "
         "docs/benchmarks.md, \"A moving average of the weights\".")]
SharpnessOpt = Annotated[float, typer.Option(
    "--sharpness-radius", metavar="RHO",
    help="Sharpness-aware steps (SAM): take each step's gradient again at the weights RHO further along it (an L2 "
         "distance over all trained weights), so that training seeks weights whose whole neighbourhood matches the "
         "teacher; each step then runs the model being trained twice. 0: plain steps. Measured: "
         "docs/benchmarks.md, \"Sharpness-aware steps\".")]
HoldoutOpt = Annotated[int, typer.Option("--holdout-size", help="Number of fixed held-out patches on which "
                                                                "agreement with the teacher and KL are measured.")]
EvalEveryOpt = Annotated[int, typer.Option("--eval-every", help="Measure held-out agreement every N training "
                                                                "steps.")]
Int8Opt = Annotated[bool, typer.Option(
    "--int8/--no-int8", help="Quantize to int8: int8 per-channel weights (7 of the 8 bits used, so that CPUs "
                             "without VNNI compute the same answers), uint8 per-tensor activations, the layout ONNX "
                             "Runtime runs fastest on CPU (the only precision offered).")]
MethodOpt = Annotated[str, typer.Option(
    "--method", help="qat: quantization-aware training, the fake-quantized copy is distilled from the original on "
                     "patches; ptq: ONNX Runtime static quantization calibrated on patches, no training (faster, "
                     "less accurate; also for models torch.export cannot capture).")]
CalibrationOpt = Annotated[int, typer.Option(
    "--calibration-size", help="Patches that calibrate the activation ranges, before training (qat) or "
                               "instead of it (ptq).")]
CalibrationMethodOpt = Annotated[str, typer.Option(
    "--calibration", help="How --method ptq sets each activation's int8 range from the calibration patches (ONNX "
                          "Runtime's calibration methods): minmax (their whole range), percentile (a high percentile "
                          "of their histogram: outliers clipped), entropy (the range whose int8 histogram loses least "
                          "information).")]
KeepFloatOpt = Annotated[Optional[list[str]], typer.Option(
    "--keep-float", help="Leave a layer in float, repeatable: a layer name as in model.named_modules() (fc, "
                         "layer1.0.conv1; a block keeps all its layers) or a layer type (Linear, Conv2d). For layers "
                         "that lose too much accuracy in int8, or run no faster in it.")]
LatencyThreadsOpt = Annotated[Optional[int], typer.Option(
    "--latency-threads", help="ONNX Runtime threads (intra-op) for timing the models. Default: as many as torch "
                              "uses (every core, unless OMP_NUM_THREADS says fewer; with --nproc, those of all the "
                              "processes); set it to the number the deployment will use.")]
LatencyBatchesOpt = Annotated[str, typer.Option(
    "--latency-batches", help="Batch sizes the models are timed at, comma-separated; the report has the "
                              "milliseconds and speed-up at each.")]
QatStepsOpt = Annotated[int, typer.Option("--qat-steps", help="Quantization-aware training steps.")]
QAT_LR_HELP = ("Learning rate of quantization-aware training (it starts from a trained model: keep it small; "
               "docs/benchmarks.md, \"Int8: quantizing the ResNet-56\").")
QatLrOpt = Annotated[float, typer.Option("--qat-lr", help=QAT_LR_HELP)]



def load(model: str, arch: str | None, trust_model: bool, input_size: int | None, mean: str | None,
         std: str | None, arch_args: str | None = None):
    from ..models import load_model
    from ..models.user import parse_args

    mean_values, std_values = floats(mean, "--mean"), floats(std, "--std")
    with stage(f"loading {model}"):
        return load_model(model, arch, trust_model=trust_model, input_size=input_size, mean=mean_values,
                          std=std_values, arch_args=parse_args(arch_args, "--arch-args"))


def read_lines(path: Path, option: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {option} {path}: {getattr(e, 'strerror', None) or e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def batch_sizes(text: str, option: str) -> tuple[int, ...]:
    """`1,32` -> (1, 32)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{option} takes comma-separated batch sizes like 1,32 (got {text!r})") from None


def latency_config(params: dict[str, Any]):
    """The LatencyConfig of --latency-threads and --latency-batches."""
    from ..latency import LatencyConfig

    return build(LatencyConfig, {}, {"threads": "--latency-threads", "batches": "--latency-batches"},
                 threads=params["latency_threads"], batches=batch_sizes(params["latency_batches"], "--latency-batches"))


def floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{option} takes three comma-separated numbers like 0.485,0.456,0.406 (got {text!r})") \
            from None
