"""The distillation loop: a student learns to match a frozen teacher on one-image patches.

Teacher and student see the *same* augmented (and mixed) batch; the student minimises
`loss_fn(student_logits, teacher_logits)`, by default KL(teacher || student) at T = 8
(losses.py). Every batch is a pure function of (seed, step), so a resumed run repeats
exactly what the uninterrupted one would have done.

`run_distillation` is one flat loop in commented blocks; what varies between methods comes
in as arguments: the loss (`loss_fn`), the augmentation (`augment`), labelled metrics
(`eval_fn`) and `hooks` called at the start, after every step and at the end.
"""
from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from . import distributed
from .augment import MIXES, Augment, default_augment
from .averaging import WeightAverage
from .config import RunConfig, require, require_choice, require_int, require_positive
from .devices import autocast_dtype, resolve_device
from .errors import InputError, TrainingError
from .evaluate import agreement, kl_divergence, normalize, predict, top1
from .losses import TEACHER_SIGNALS, LossFn, kl_loss
from .mimicry import FeatureMimicry
from .outputs import atomic_write
from .patches import mix_seed
from .progress import Bar

# How the peak learning rate follows the number of processes N (the global batch grows N-fold):
# "none" keeps lr, "sqrt" multiplies it by sqrt(N) (often advised for Adam-type optimizers),
# "linear" by N (Goyal et al.'s rule for SGD).
LR_SCALINGS = ("none", "sqrt", "linear")
# AdamW (the paper's) or SGD with Nesterov momentum 0.9, whose steps scale with each gradient instead of evening
# them out: measured as a way to heal (docs/benchmarks.md, "Healing held nearer the teacher"); it wants a far
# larger --lr than AdamW.
OPTIMIZERS = ("adamw", "sgd")
CHECKPOINT_NAME = "checkpoint.pt"
# A checkpoint made with other values of these would not continue the same run.
RESUME_MUST_MATCH = ("steps", "batch_size", "seed", "lr", "lr_scaling", "mix", "teacher_signal", "temperature",
                     "hardest_of", "match", "ema", "optimizer", "sharpness_radius")
# What the student learns to reproduce: the teacher's softened outputs (the paper's KL), or its last feature map
# with the classifier frozen as the teacher's (mimicry.py); "auto" is features when healing a pruned copy (prune,
# compress) and for a new student whose last feature map and classifier have the teacher's shapes (distill, which
# gives it a copy of the teacher's classifier): both learnt more that way; logits otherwise and for int8 training.
MATCHES = ("auto", "logits", "features")


class PatchSource(Protocol):
    """Anything that gives batch `index` of `n` patches, float (n, 3, S, S) in [0, 1]."""

    size: int

    def batch(self, n: int, index: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class DistillConfig:
    """What the student is taught with: the optimizer, the loss and the augmentation."""

    steps: int = 2000
    batch_size: int = 128  # per process
    lr: float = 1e-3  # peak learning rate, cosine schedule after warm-up
    weight_decay: float = 0.0  # the paper's CIFAR runs use effectively none
    optimizer: str = "adamw"  # see OPTIMIZERS
    warmup: float = 0.03  # fraction of the steps spent warming the learning rate up
    lr_scaling: str = "none"  # see LR_SCALINGS; only matters with several processes
    temperature: float = 8.0
    scale_loss_by_t2: bool = True  # keeps gradient size independent of T (Hinton et al.)
    teacher_signal: str = "soft"  # see losses.TEACHER_SIGNALS
    topk: int = 5
    mix: str = "auto"  # see augment.MIXES; "auto" by the source (augment.mixing_for_source)
    mix_alpha: float | None = None  # Beta(a, a); None by the source: the paper's 0.25 for patches
    flip_and_shift: bool = True  # the released code's on-the-fly flip + pad-4 crop
    # Keep BatchNorm running statistics as they are instead of re-estimating them on patches.
    # Tempting when healing a pretrained model (its statistics come from real data), but after
    # pruning they no longer fit (docs/benchmarks.md, "BatchNorm statistics while healing").
    freeze_bn_stats: bool = False
    # Draw hardest_of x batch_size patches a step and train on the batch_size of them the student gets
    # most wrong (the largest KL to the teacher): 1 trains on every patch drawn. Costs a forward pass of
    # both models over all the candidates (docs/benchmarks.md, "Harder patches").
    hardest_of: int = 1
    match: str = "auto"  # see MATCHES
    # Return a moving average of the weights (averaging.py) instead of the last ones: its decay, or 0 for the
    # last weights. Measured: docs/benchmarks.md, "A moving average of the weights".
    ema: float = 0.0
    # Sharpness-aware steps (SAM, Foret et al. 2021): each gradient is taken again at the weights this far uphill
    # (an L2 distance over all trainable weights), so that healing seeks weights whose whole neighbourhood fits
    # the teacher; a second forward and backward pass of the student per step. 0 for plain steps. Measured:
    # docs/benchmarks.md, "Sharpness-aware steps".
    sharpness_radius: float = 0.0

    def __post_init__(self):
        require_int(self, "steps", 1)
        require_int(self, "batch_size", 2)
        require_positive(self, "lr")
        require(self, "weight_decay", self.weight_decay >= 0, f"must not be negative (got {self.weight_decay})")
        require_choice(self, "optimizer", OPTIMIZERS)
        require(self, "warmup", 0 <= self.warmup < 1, f"is a fraction of the steps in [0, 1) (got {self.warmup})")
        require_choice(self, "lr_scaling", LR_SCALINGS)
        require_positive(self, "temperature", "positive")
        require_choice(self, "teacher_signal", TEACHER_SIGNALS)
        require_int(self, "topk", 1)
        require_choice(self, "mix", MIXES)
        if self.mix_alpha is not None:
            require_positive(self, "mix_alpha")
        require_int(self, "hardest_of", 1)
        require_choice(self, "match", MATCHES)
        require(self, "ema", isinstance(self.ema, (int, float)) and 0 <= self.ema < 1,
                f"is a decay in [0, 1), 0 for no averaging (got {self.ema})")
        require(self, "sharpness_radius", isinstance(self.sharpness_radius, (int, float))
                and 0 <= self.sharpness_radius < math.inf,
                f"is a distance in weight space, 0 for plain steps (got {self.sharpness_radius})")


@dataclass
class TrainResult:
    """What one run of the loop did."""

    steps: int
    seconds: float
    patches_per_second: float
    final_loss: float
    holdout_agreement: float
    holdout_kl: float
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # the DistillConfig, as a dict
    world_size: int = 1  # processes that trained together, each on config.batch_size patches per step
    lr: float = float("nan")  # the peak learning rate used: config.lr after lr_scaling
    precision: str = "float32"  # or the autocast dtype: "bfloat16", "float16"

    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.config["batch_size"]


class TrainingHook:
    """Called by `run_distillation` at fixed points; override the ones you need."""

    def on_start(self, teacher: nn.Module, student: nn.Module) -> None:
        """Before the first step, with both models on the training device."""

    def after_step(self, step: int, student: nn.Module, loss: float) -> None:
        """After optimizer step `step` (1-based)."""

    def on_end(self, student: nn.Module) -> None:
        """After the last step, or when training stops early (also on errors)."""


def scaled_lr(lr: float, scaling: str, world_size: int) -> float:
    return lr * {"none": 1.0, "sqrt": math.sqrt(world_size), "linear": float(world_size)}[scaling]


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def batch_index(step: int, rank: int, world_size: int) -> int:
    """Which patch batch (and augmentation seed) rank `rank` trains on at `step`: every rank its own,
    a pure function of the three, so a resumed run repeats exactly; one process uses batch `step`."""
    return step * world_size + rank


@dataclass
class _Optimization:
    """The optimizer, its schedule and the fp16 loss scaler: what a checkpoint must carry besides the weights."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    lr: float

    @classmethod
    def build(cls, student: nn.Module, config: DistillConfig, world: int, fp16: bool) -> "_Optimization":
        lr = scaled_lr(config.lr, config.lr_scaling, world)
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                        weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=config.weight_decay)
        warmup_steps = int(config.warmup * config.steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_with_warmup(s, config.steps, warmup_steps))
        return cls(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=fp16), lr)

    def step(self, loss: torch.Tensor, sharpness_radius: float = 0.0,
             loss_again: Callable[[], torch.Tensor] | None = None, model: nn.Module | None = None) -> None:
        """One optimizer step on `loss`'s gradient; with `sharpness_radius`, on the gradient of `loss_again()`
        (the same batch's loss recomputed) at the weights that far along the first gradient (SAM)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if sharpness_radius:
            self._gradient_uphill(sharpness_radius, loss_again, model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _gradient_uphill(self, radius: float, loss_again: Callable[[], torch.Tensor], model: nn.Module) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        # fp16's loss scale multiplies every gradient alike: the direction, all that is used here, is the same.
        norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params]))
        if not torch.isfinite(norm) or norm == 0:
            return  # an overflow (the scaler then skips the step) or nothing to climb
        with torch.no_grad():
            climbs = [p.grad * (radius / norm) for p in params]
            for p, climb in zip(params, climbs):
                p.add_(climb)
        self.optimizer.zero_grad(set_to_none=True)
        # The second pass sees the same batch at other weights: BatchNorm's running statistics take the first only.
        norms = [m for m in model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        try:
            for m in norms:
                m.track_running_stats = False  # in training mode: batch statistics, buffers left alone
            self.scaler.scale(loss_again()).backward()
        finally:
            for m in norms:
                m.track_running_stats = True
            with torch.no_grad():
                for p, climb in zip(params, climbs):
                    p.sub_(climb)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def _resume_identity(config: DistillConfig, run: RunConfig) -> dict:
    return {**asdict(config), "seed": run.seed}


def load_checkpoint(path: Path, config: DistillConfig, run: RunConfig, world: int, device: torch.device) -> dict:
    """A checkpoint's state, after checking it continues this very run."""
    state = torch.load(path, map_location=device, weights_only=True)
    saved, now = state["config"], _resume_identity(config, run)
    made_before = asdict(DistillConfig())  # what a checkpoint older than a field had for it
    for key in RESUME_MUST_MATCH:
        if saved.get(key, made_before.get(key)) != now[key]:
            raise InputError(f"cannot resume {path}: it was made with {key}={saved.get(key)!r}, "
                             f"now {key}={now[key]!r}")
    made_by = state.get("world_size", 1)
    if made_by != world:
        # Each rank's batches depend on the number of ranks: another number would not repeat the run.
        raise InputError(f"cannot resume {path}: it was made by {_processes(made_by)}, this run has "
                         f"{_processes(world)}; resume it with {made_by} (torchrun --nproc-per-node {made_by} "
                         f"or compress1img --nproc {made_by})")
    return state


def save_checkpoint(path: Path, step: int, student: nn.Module, optimization: _Optimization, config: DistillConfig,
                    run: RunConfig, world: int, history: list[dict], seconds: float,
                    average: WeightAverage | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "student": student.state_dict(), **optimization.state_dict(),
             "config": _resume_identity(config, run), "world_size": world, "history": history, "seconds": seconds}
    if average is not None:
        state["average"] = average.state_dict()
    atomic_write(path, lambda f: torch.save(state, f))


def evaluate(student: nn.Module, holdout: torch.Tensor, holdout_teacher: torch.Tensor, mean, std,
             device: torch.device, eval_fn: Callable[[nn.Module], dict] | None) -> dict:
    """Agreement and KL with the teacher on the held-out patches, plus whatever `eval_fn` measures."""
    student_logits = predict(student, holdout, mean, std, device=device)
    row = {"holdout_agreement": agreement(holdout_teacher, student_logits),
           "holdout_kl": kl_divergence(holdout_teacher, student_logits)}
    if eval_fn is not None:
        row.update(eval_fn(student))
    return row


def _set_train_mode(student: nn.Module, freeze_bn_stats: bool) -> None:
    student.train()
    if freeze_bn_stats:
        for module in student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@dataclass
class _Placement:
    """Where and how the two models run: device, processes, precision, memory layout."""

    device: torch.device
    world: int
    rank: int
    main: bool
    amp_dtype: torch.dtype | None
    channels_last: bool
    teacher_home: torch.device

    @classmethod
    def prepare(cls, teacher: nn.Module, student: nn.Module, run: RunConfig) -> "_Placement":
        """Move both models to the training device, in the layout its fastest kernels read."""
        device = resolve_device(run.device)
        distributed.init(device)
        first = next(teacher.parameters(), None)
        amp_dtype = autocast_dtype(device) if run.amp else None
        placement = cls(device, distributed.world_size(), distributed.rank(), distributed.is_main(), amp_dtype,
                        # Both GPUs' and oneDNN's fastest convolutions read channels-last.
                        channels_last=device.type == "cuda" or amp_dtype is not None,
                        teacher_home=first.device if first is not None else torch.device("cpu"))
        layout = torch.channels_last if placement.channels_last else torch.preserve_format
        teacher.to(device).eval().to(memory_format=layout)
        for parameter in teacher.parameters():  # (not requires_grad_: TorchScript modules refuse it)
            parameter.requires_grad_(False)
        student.to(device).to(memory_format=layout)
        return placement

    def restore(self, teacher: nn.Module, student: nn.Module) -> None:
        if self.channels_last:
            student.to(memory_format=torch.contiguous_format)
            teacher.to(memory_format=torch.contiguous_format)
        teacher.to(self.teacher_home)

    @property
    def fp16(self) -> bool:
        return self.device.type == "cuda" and self.amp_dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)


def make_batch(patches: PatchSource, augment: Augment, batch_size: int, index: int, seed: int, mean, std,
               placement: _Placement, hardest_of: int = 1,
               choose: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Batch `index`: patches (with `choose`, the `batch_size` it keeps of `hardest_of` times as many drawn),
    augmented with a seed of (run seed, index), normalised, on the device."""
    x = patches.batch(batch_size * hardest_of, index).to(placement.device, non_blocking=True)
    if choose is not None:
        x = choose(x, batch_size)
    x = normalize(augment(x, mix_seed(seed, index, "augment")), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if placement.channels_last else x


@torch.no_grad()
def hardest_patches(x: torch.Tensor, n: int, *, teacher: nn.Module, student: nn.Module, temperature: float,
                    mean, std, autocast: Callable = contextlib.nullcontext,
                    freeze_bn_stats: bool = False) -> torch.Tensor:
    """The `n` patches of `x` (in [0, 1]) on which the student, as it is now, disagrees most with the teacher:
    the largest KL(teacher || student) at `temperature`, in the order they were drawn. The student is
    scored in eval mode, so that choosing does not move its BatchNorm statistics."""
    inputs = normalize(x, mean, std)
    student.eval()
    with autocast():
        teacher_logits, student_logits = teacher(inputs), student(inputs)
    _set_train_mode(student, freeze_bn_stats)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=1)
    s = torch.log_softmax(student_logits.float() / temperature, dim=1)
    kl = (t.exp() * (t - s)).sum(1)
    return x[kl.topk(n).indices.sort().values]


def train_step(model: nn.Module, teacher: nn.Module, x: torch.Tensor, loss_fn: LossFn,
               optimization: _Optimization, placement: _Placement, step: int, checkpoint_path: Path | None,
               config: DistillConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both models on the same batch, the loss, one optimizer step; (loss, teacher logits, student logits)."""
    with placement.autocast():
        with torch.inference_mode():
            teacher_logits = teacher(x)
        student_logits = model(x)
        loss = loss_fn(student_logits, teacher_logits)
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()} at step {step + 1}; "
                            f"{_kept(checkpoint_path)}try a lower --lr (now {config.lr:g})")

    def loss_again() -> torch.Tensor:
        with placement.autocast():
            return loss_fn(model(x), teacher_logits)

    optimization.step(loss, config.sharpness_radius, loss_again, model)
    return loss, teacher_logits, student_logits


def run_distillation(teacher: nn.Module, student: nn.Module, patches: PatchSource, config: DistillConfig,
                     run: RunConfig = RunConfig(), *, mean: tuple, std: tuple, holdout: torch.Tensor,
                     checkpoint_dir: str | Path | None = None, loss_fn: LossFn | None = None,
                     augment: Augment | None = None, eval_fn: Callable[[nn.Module], dict] | None = None,
                     hooks: Sequence[TrainingHook] = (), label: str = "distilling",
                     patches_from_step: int = 0) -> TrainResult:
    """Train `student` to match the frozen `teacher` on patches; returns what happened.

    `mean`/`std` are the normalisation both models expect (patches are in [0, 1]). With `config.match`
    "features" (and no `loss_fn`) the student learns the teacher's last feature map, its classifier
    frozen (mimicry.FeatureMimicry); "auto" is "logits" here (the commands choose it for their models).
    `holdout` holds fixed patches (float NCHW in [0, 1]) never used for training, on
    which agreement and KL are measured every `run.eval_every` steps. With `checkpoint_dir`,
    a checkpoint is kept there and `run.resume` continues from it. `loss_fn` and `augment`
    default to what `config` describes (losses.kl_loss, augment.default_augment). `label` names the
    progress bar (progress.Bar, shown with `run.progress`). Step s trains on the patches and augmentation
    of step `patches_from_step` + s: a later healing of the same run passes the steps healed before it,
    so that it goes on to new patches instead of drawing the first ones again. With `config.ema` the
    student is measured and handed back as the moving average of its weights (averaging.py).

    Under torchrun every rank calls this with the same arguments: each trains on its own
    `config.batch_size` patches per step (see `batch_index`), DDP averages the gradients,
    and rank 0 alone evaluates (sharing the results), checkpoints and shows progress.
    The teacher is left on the device it came on.
    """
    mimicry = FeatureMimicry.for_models(teacher, student, _example(holdout, mean, std, student)) \
        if config.match == "features" and loss_fn is None else None
    if mimicry is not None:
        mimicry.freeze_classifier(student)
        loss_fn, hooks = mimicry.loss, [*hooks, mimicry]
    loss_fn = loss_fn or kl_loss(config)
    augment = augment or default_augment(config)
    # -- models on the device, the optimizer, the teacher's view of the held-out patches, resume --
    placement = _Placement.prepare(teacher, student, run)
    device, world, main = placement.device, placement.world, placement.main
    optimization = _Optimization.build(student, config, world, fp16=placement.fp16)
    holdout_x = holdout.to(device)
    holdout_teacher = predict(teacher, holdout_x, mean, std, device=device) if main else None
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    average = WeightAverage(student, config.ema) if config.ema else None
    start_step, history, earlier_seconds = _resume(checkpoint_path, config, run, placement, student, optimization,
                                                   average)
    model = torch.compile(distributed.wrap(student, device)) if run.compile else distributed.wrap(student, device)
    choose = functools.partial(hardest_patches, teacher=teacher, student=student, temperature=config.temperature,
                               mean=mean, std=std, autocast=placement.autocast,
                               freeze_bn_stats=config.freeze_bn_stats) \
        if config.hardest_of > 1 else None
    progress = _Progress(label, config.steps, start_step, run.progress and main, earlier_seconds)

    def measure(step: int) -> dict:
        # On the plain student, not through DDP: no collective that other ranks would wait for; with an
        # average, on the average, which is what the run returns.
        row = None
        if main:
            with average.applied(student) if average is not None else contextlib.nullcontext():
                row = {"step": step, "loss": progress.loss,
                       **evaluate(student, holdout_x, holdout_teacher, mean, std, device, eval_fn)}
        _set_train_mode(student, config.freeze_bn_stats)
        return distributed.share(row)

    for hook in hooks:
        hook.on_start(teacher, student)
    _set_train_mode(student, config.freeze_bn_stats)
    try:
        with _stop_on_sigint() as stop, _out_of_memory_advice(config.batch_size, checkpoint_path, progress.bar):
            for step in range(start_step, config.steps):
                # -- one step on this rank's batch ---------------------------------------------------
                x = make_batch(patches, augment, config.batch_size,
                               batch_index(patches_from_step + step, placement.rank, world), run.seed,
                               mean, std, placement, config.hardest_of, choose)
                loss, teacher_logits, student_logits = train_step(model, teacher, x, loss_fn, optimization,
                                                                  placement, step, checkpoint_path, config)
                # -- bookkeeping: every rank stops at the same step; the loss shown is the whole batch's
                done = step + 1
                loss_value, stopping = distributed.mean_and_any(loss.item(), stop.requested, device)
                progress.stepped(loss_value, len(x) * world, teacher_logits, student_logits)
                if average is not None:
                    average.update(student, done)
                for hook in hooks:
                    hook.after_step(done, student, loss_value)
                # -- evaluate and checkpoint ---------------------------------------------------------
                if done % run.eval_every == 0 or done == config.steps:
                    with progress.evaluating():
                        history.append(measure(done))
                        progress.write(history[-1])
                if checkpoint_path is not None and main and (
                        done % run.checkpoint_every == 0 or done == config.steps or stopping):
                    save_checkpoint(checkpoint_path, done, student, optimization, config, run, world, history,
                                    progress.seconds, average)
                if stopping:
                    where = f"; checkpoint saved in {checkpoint_path}, continue with --resume" \
                        if checkpoint_path else ""
                    raise TrainingInterrupted(f"stopped after step {done} of {config.steps}{where}")
    finally:
        progress.close()
        for hook in hooks:
            hook.on_end(student)

    # -- the result: the student (the average, with one) back in eval mode, both models as they came
    seconds = progress.seconds
    if average is not None:
        average.copy_to(student)
    distributed.copy_from_main(student)
    student.eval()
    final = history[-1] if history and history[-1]["step"] == config.steps else measure(config.steps)
    student.eval()
    placement.restore(teacher, student)
    return TrainResult(steps=config.steps, seconds=seconds,
                       patches_per_second=config.steps * config.batch_size * world / seconds if seconds > 0
                       else float("nan"),
                       final_loss=final["loss"], holdout_agreement=final["holdout_agreement"],
                       holdout_kl=final["holdout_kl"], history=history, config=asdict(config), world_size=world,
                       lr=optimization.lr, precision=str(placement.amp_dtype or torch.float32).removeprefix("torch."))


def _example(holdout: torch.Tensor, mean, std, model: nn.Module) -> torch.Tensor:
    """Two held-out patches, normalised, on the model's device: what probing a model's layers runs on."""
    device = next(model.parameters()).device
    return normalize(holdout[:2].to(device), mean, std)


def _resume(checkpoint_path: Path | None, config: DistillConfig, run: RunConfig, placement: _Placement,
            student: nn.Module, optimization: _Optimization,
            average: WeightAverage | None) -> tuple[int, list[dict], float]:
    """(first step, history, training seconds so far): from the checkpoint when resuming, else from scratch."""
    if not (run.resume and checkpoint_path is not None and checkpoint_path.exists()):
        return 0, [], 0.0
    state = load_checkpoint(checkpoint_path, config, run, placement.world, placement.device)
    student.load_state_dict(state["student"])
    optimization.load_state_dict(state)
    if average is not None:
        average.load_state_dict(state["average"])
    return state["step"], state["history"], state.get("seconds", 0.0)


class _Progress:
    """What the loop shows and counts: the bar (rank 0), the smoothed loss, and the training time,
    which leaves evaluation out so that patches/s measures training alone."""

    def __init__(self, label: str, steps: int, start_step: int, shown: bool, earlier_seconds: float):
        # Outside a terminal (a pipe, a log file): a line every 10% of the steps.
        self.bar = Bar(label, steps, initial=start_step, shown=shown, every=0.1)
        self.earlier_seconds = earlier_seconds
        self.started, self.seen, self.eval_seconds = time.perf_counter(), 0, 0.0
        self.loss = float("nan")

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.started - self.eval_seconds

    def stepped(self, loss: float, patches: int, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
        self.seen += patches
        self.loss = loss if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * loss
        # On the batch being trained on: the held-out agreement is in the evaluation lines and the report.
        batch_agreement = agreement(teacher_logits.float(), student_logits.detach().float())
        self.bar.update(1, loss=f"{self.loss:.3f}", batch_agree=f"{batch_agreement:.0f}%",
                        patches_s=f"{self.seen / (self.seconds - self.earlier_seconds):.0f}")

    @contextlib.contextmanager
    def evaluating(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.eval_seconds += time.perf_counter() - started

    def write(self, row: dict) -> None:
        self.bar.write(_format_row(row))

    def close(self) -> None:
        self.bar.close()


def processes_report(result: TrainResult) -> dict:
    """How many processes trained, the batch they made together and the learning rate it got, for reports."""
    scaling = result.config["lr_scaling"]
    return {"world_size": result.world_size, "backend": distributed.backend() or "none (one process)",
            "batch_per_process": result.config["batch_size"], "global_batch": result.global_batch_size,
            "lr_given": result.config["lr"], "lr_used": result.lr,
            "lr_scaling": scaling if scaling != "none" else "none (the given lr, whatever the number of processes)",
            "precision": result.precision}


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


class TrainingInterrupted(TrainingError):
    """Ctrl-C during training: a checkpoint was saved."""


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _stop_on_sigint():
    """The first Ctrl-C asks the loop to stop at the end of the current step (after a
    checkpoint); a second one interrupts at once. Only the main thread may set handlers."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _out_of_memory_advice(batch_size: int, checkpoint_path: Path | None, bar):
    """Turn running out of memory into advice: the batch is what the user controls."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        # CUDA raises torch.OutOfMemoryError; the CPU allocator a plain RuntimeError.
        if not (isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(e)
                or "can't allocate memory" in str(e)):
            raise
        bar.close()
        raise TrainingError(f"out of memory with --batch-size {batch_size}; {_kept(checkpoint_path)}"
                            f"try a smaller --batch-size (e.g. {max(batch_size // 2, 2)})") from None


def _kept(checkpoint_path: Path | None) -> str:
    if checkpoint_path is None or not checkpoint_path.exists():
        return ""
    step = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["step"]
    return f"the last good checkpoint (step {step}) is kept in {checkpoint_path}; "


def _format_row(row: dict) -> str:
    parts = [f"step {row['step']}"]
    for key, value in row.items():
        if key != "step":
            parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def accuracy_fn(images: torch.Tensor, labels: torch.Tensor, mean: tuple, std: tuple,
                device: str | torch.device = "cpu") -> Callable[[nn.Module], dict]:
    """An `eval_fn` for `run_distillation` that reports top-1 on labelled data."""
    def evaluate_accuracy(model: nn.Module) -> dict:
        return {"accuracy": top1(predict(model, images, mean, std, device=device), labels)}
    return evaluate_accuracy
