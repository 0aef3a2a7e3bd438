"""The distillation loop: a student learns to match a frozen teacher on one-image patches.

Teacher and student see the *same* augmented (and mixed) batch, and the loss is
KL(teacher || student) on softmax(logits / T), as in "The Augmented Image Prior"
(Asano & Saeed, ICLR 2023). Every batch is a pure function of (seed, step), so a
resumed run repeats exactly what the uninterrupted one would have done.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .errors import InputError, TrainingError
from .evaluate import agreement, kl_divergence, normalize, predict, top1

MIXES = ("cutmix", "mixup", "none")
TEACHER_SIGNALS = ("soft", "topk", "hard")
# How the peak learning rate follows the number of processes N (the global batch grows N-fold):
# "none" keeps --lr, "sqrt" multiplies it by sqrt(N) (often advised for Adam-type optimizers),
# "linear" by N (Goyal et al.'s rule for SGD).
LR_SCALINGS = ("none", "sqrt", "linear")
CHECKPOINT_NAME = "checkpoint.pt"


class PatchSource(Protocol):
    """Anything that gives batch `index` of `n` patches, float (n, 3, S, S) in [0, 1]."""

    size: int

    def batch(self, n: int, index: int) -> torch.Tensor: ...


@dataclass
class DistillConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0  # the paper's CIFAR runs use effectively none
    warmup: float = 0.03  # fraction of the steps spent warming the learning rate up
    temperature: float = 8.0
    scale_loss_by_t2: bool = True  # keeps gradient size independent of T (Hinton et al.)
    mix: str = "cutmix"
    mix_alpha: float = 0.25  # Beta(a, a); the paper's CIFAR code uses 0.25
    teacher_signal: str = "soft"
    topk: int = 5
    flip_and_shift: bool = True  # the released code's on-the-fly flip + pad-4 crop
    # Keep BatchNorm running statistics as they are instead of re-estimating them on patches.
    # Tempting when healing a pretrained model (its statistics come from real data), but after
    # pruning they no longer fit: ResNet-20 at 50% healed to 50% top-1 re-estimating, 15-19% frozen.
    freeze_bn_stats: bool = False
    seed: int = 0
    holdout_size: int = 1024
    eval_every: int = 250
    checkpoint_every: int = 250
    device: str = "auto"
    lr_scaling: str = "none"  # see LR_SCALINGS; only matters with several processes
    compile: bool = False  # torch.compile the student (pays off on GPUs, after a compile of a minute or so)
    amp: bool = True  # mixed precision where the hardware has it (see `autocast_dtype`)

    def validate(self) -> None:
        if self.steps < 1:
            raise InputError(f"--steps must be at least 1 (got {self.steps})")
        if self.batch_size < 2:
            raise InputError(f"--batch-size must be at least 2 (got {self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number (got {self.lr})")
        if not self.temperature > 0:
            raise InputError(f"--temperature must be positive (got {self.temperature})")
        if not 0 <= self.warmup < 1:
            raise InputError(f"--warmup is a fraction of the steps in [0, 1) (got {self.warmup})")
        if self.mix not in MIXES:
            raise InputError(f"--mix must be one of {', '.join(MIXES)} (got {self.mix!r})")
        if self.teacher_signal not in TEACHER_SIGNALS:
            raise InputError(f"--teacher-signal must be one of {', '.join(TEACHER_SIGNALS)} (got {self.teacher_signal!r})")
        if self.lr_scaling not in LR_SCALINGS:
            raise InputError(f"--lr-scaling must be one of {', '.join(LR_SCALINGS)} (got {self.lr_scaling!r})")
        if self.holdout_size < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise InputError("--holdout-size, --eval-every and --checkpoint-every must be at least 1")


@dataclass
class DistillResult:
    steps: int
    seconds: float
    patches_per_second: float
    final_loss: float
    holdout_agreement: float
    holdout_kl: float
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    world_size: int = 1  # processes that trained together, each on config.batch_size patches per step
    lr: float = float("nan")  # the peak learning rate used: config.lr after lr_scaling
    precision: str = "float32"  # or the autocast dtype: "bfloat16", "float16"

    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.config["batch_size"]


def resolve_device(device: str) -> torch.device:
    """The device to train on; under torchrun "cuda" (and "auto" with GPUs) is this rank's GPU."""
    if device == "auto":
        return distributed.device_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for, but no CUDA GPU is available here (use --device cpu)")
    try:
        return distributed.device_for(torch.device(device))
    except RuntimeError:
        raise InputError(f"unknown --device {device!r} (use cpu, cuda or auto)") from None


def device_name(device: torch.device) -> str:
    """What the report calls the device: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    name = platform.processor() or platform.machine()
    try:  # Linux names the model only here
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _cpu_has_bf16() -> bool:
    try:  # oneDNN's own check for native bf16 (AVX512-BF16, AMX); without it bf16 is emulated and slow
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype training uses on `device`, None for plain float32.

    On CPUs with native bf16, bf16 autocast with channels_last made a ResNet-56 -> pruned ResNet-56
    distillation step 1.79x faster (1.73x bf16 alone) on the development machine; elsewhere the CPU trains in float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None


def scaled_lr(lr: float, scaling: str, world_size: int) -> float:
    return lr * {"none": 1.0, "sqrt": math.sqrt(world_size), "linear": float(world_size)}[scaling]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 8.0,
                      signal: str = "soft", topk: int = 5, scale_by_t2: bool = True) -> torch.Tensor:
    """KL(teacher || student) of softmax(logits / T), mean over the batch.

    signal "topk" keeps only the teacher's k largest logits, "hard" its argmax
    (plain cross-entropy, no temperature): the paper's degraded-teacher variants.
    """
    teacher_logits = teacher_logits.float()
    student_logits = student_logits.float()
    if signal == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(1))
    if signal == "topk":
        k = min(topk, teacher_logits.shape[1])
        kth = teacher_logits.topk(k, dim=1).values[:, -1:]
        teacher_logits = teacher_logits.masked_fill(teacher_logits < kth, float("-inf"))
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    # Written out instead of F.kl_div so that the -inf entries of top-k contribute 0, not NaN.
    per_class = torch.where(torch.isinf(log_t), torch.zeros_like(log_t), log_t.exp() * (log_t - log_s))
    loss = per_class.sum(1).mean()
    return loss * temperature**2 if scale_by_t2 else loss


def mix_batch(x: torch.Tensor, mode: str, lam: float, generator: torch.Generator) -> torch.Tensor:
    """CutMix (one box per batch) or MixUp, with the batch reversed as partner.

    Only the input is mixed: the teacher labels the mixed images itself.
    """
    if mode == "none" or len(x) < 2:
        return x
    partner = x.flip(0)
    if mode == "mixup":
        return lam * x + (1 - lam) * partner
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return mixed


def flip_and_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to S/8 pixels with zero padding, per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)
    pad = max(h // 8, 1)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _step_seed(seed: int, step: int) -> int:
    # On-the-fly augmentation of step k depends on (seed, k) only, never on history.
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63)


def batch_index(step: int, rank: int, world_size: int) -> int:
    """Which patch batch (and augmentation seed) rank `rank` trains on at `step`: every rank its own,
    a pure function of the three, so a resumed run repeats exactly; one process uses batch `step`."""
    return step * world_size + rank


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_distillation(teacher: nn.Module, student: nn.Module, patches: PatchSource, config: DistillConfig,
                     *, mean: tuple, std: tuple, holdout: torch.Tensor, out_dir: str | Path | None = None,
                     resume: bool = False, eval_fn: Callable[[nn.Module], dict] | None = None,
                     progress: bool = True) -> DistillResult:
    """Train `student` to match the frozen `teacher` on patches; returns what happened.

    `mean`/`std` are the normalisation both models expect (patches are in [0, 1]).
    `holdout` holds fixed patches (float NCHW in [0, 1]) never used for training, on
    which agreement and KL are measured. Checkpoints go to `out_dir/checkpoint.pt`.
    `eval_fn(student)` may add labelled metrics (e.g. test accuracy) to each evaluation.

    Under torchrun every rank calls this with the same arguments: each trains on its own
    `config.batch_size` patches per step (see `batch_index`), DDP averages the gradients,
    and rank 0 alone evaluates (sharing the results), checkpoints and shows progress.
    The teacher is left on the device it came on.
    """
    config.validate()
    device = resolve_device(config.device)
    distributed.init(device)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    use_cuda = device.type == "cuda"
    first = next(teacher.parameters(), None)
    teacher_home = first.device if first is not None else torch.device("cpu")
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student.to(device)
    amp_dtype = autocast_dtype(device) if config.amp else None
    # Both GPUs' and oneDNN's fastest convolutions read channels-last (1.19x on its own on the CPU above).
    channels_last = use_cuda or amp_dtype is not None
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)

    lr = scaled_lr(config.lr, config.lr_scaling, world)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=config.weight_decay)
    warmup_steps = int(config.warmup * config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, config.steps, warmup_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and amp_dtype == torch.float16)

    holdout_x = holdout.to(device)
    holdout_teacher = predict(teacher, holdout_x, mean, std, device=device) if main else None

    history: list[dict] = []
    earlier_seconds = 0.0  # training time of the runs this one resumes
    start_step = 0
    checkpoint_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        saved = state["config"]
        for key in ("steps", "batch_size", "seed", "lr", "lr_scaling", "mix", "teacher_signal", "temperature"):
            if saved.get(key, getattr(DistillConfig, key)) != getattr(config, key):
                raise InputError(f"cannot resume {checkpoint_path}: it was made with {key}={saved.get(key)!r}, "
                                 f"now {key}={getattr(config, key)!r}")
        made_by = state.get("world_size", 1)
        if made_by != world:
            # Each rank's batches depend on the number of ranks: another number would not repeat the run.
            raise InputError(f"cannot resume {checkpoint_path}: it was made by {_processes(made_by)}, this run has "
                             f"{_processes(world)}; resume it with {made_by} (torchrun --nproc-per-node {made_by} "
                             f"or compress1img --nproc {made_by})")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_step, history = state["step"], state["history"]
        earlier_seconds = state.get("seconds", 0.0)

    def save_checkpoint(step: int) -> None:
        if checkpoint_path is None or not main:
            return
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save({"step": step, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                      "config": asdict(config), "world_size": world, "history": history,
                      "seconds": earlier_seconds + time.perf_counter() - started - eval_seconds}, checkpoint_path)

    def evaluate_now(step: int, loss: float) -> dict:
        row = None
        if main:  # on the plain student, not through DDP: no collective that other ranks would wait for
            student_logits = predict(student, holdout_x, mean, std, device=device)
            row = {"step": step, "loss": loss, "holdout_agreement": agreement(holdout_teacher, student_logits),
                   "holdout_kl": kl_divergence(holdout_teacher, student_logits)}
            if eval_fn is not None:
                row.update(eval_fn(student))
        train_mode()
        return distributed.share(row)

    def train_mode() -> None:
        student.train()
        if config.freeze_bn_stats:
            for module in student.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    model = distributed.wrap(student, device)
    if config.compile:
        model = torch.compile(model)
    # In a log file (no terminal) a bar line every 30 s is plenty.
    bar = tqdm(total=config.steps, initial=start_step, disable=not (progress and main), desc="distilling",
               unit="step", dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
    started = time.perf_counter()
    seen = 0
    eval_seconds = 0.0  # kept out of the training time so patches/s measures training alone
    running_loss = float("nan")
    train_mode()
    with _stop_on_sigint() as stop, _out_of_memory_advice(config.batch_size, checkpoint_path, bar):
        for step in range(start_step, config.steps):
            index = batch_index(step, rank, world)
            step_seed = _step_seed(config.seed, index)
            gen = torch.Generator().manual_seed(step_seed)
            x = patches.batch(config.batch_size, index).to(device, non_blocking=True)
            if config.flip_and_shift:
                x = flip_and_shift(x, gen)
            lam = float(np.random.default_rng(step_seed).beta(config.mix_alpha, config.mix_alpha))
            x = mix_batch(x, config.mix, lam, gen)
            x = normalize(x, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                with torch.inference_mode():
                    teacher_logits = teacher(x)
                student_logits = model(x)
                loss = distillation_loss(student_logits, teacher_logits, config.temperature,
                                         config.teacher_signal, config.topk, config.scale_loss_by_t2)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingError(f"the loss became {loss.item()} at step {step + 1}; {_kept(checkpoint_path)}"
                                    f"try a lower --lr (now {config.lr:g})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            done = step + 1
            seen += len(x) * world
            # Every rank must stop at the same step, and the loss shown is the whole batch's.
            loss_value, stopping = distributed.mean_and_any(loss.item(), stop.requested, device)
            running_loss = loss_value if math.isnan(running_loss) else 0.9 * running_loss + 0.1 * loss_value
            bar.update(1)
            bar.set_postfix(refresh=False, loss=f"{running_loss:.3f}",
                            agree=f"{agreement(teacher_logits.float(), student_logits.detach().float()):.0f}%",
                            patches_s=f"{seen / (time.perf_counter() - started - eval_seconds):.0f}")
            if done % config.eval_every == 0 or done == config.steps:
                eval_started = time.perf_counter()
                row = evaluate_now(done, running_loss)
                history.append(row)
                if progress and main:
                    bar.write(_format_row(row), file=sys.stderr)
                eval_seconds += time.perf_counter() - eval_started
            if done % config.checkpoint_every == 0 or done == config.steps or stopping:
                save_checkpoint(done)
            if stopping:
                bar.close()
                where = f"; checkpoint saved in {checkpoint_path}, continue with --resume" if checkpoint_path else ""
                raise TrainingInterrupted(f"stopped after step {done} of {config.steps}{where}")
    bar.close()
    seconds = earlier_seconds + time.perf_counter() - started - eval_seconds
    distributed.copy_from_main(student)
    student.eval()
    final = history[-1] if history and history[-1]["step"] == config.steps else evaluate_now(config.steps, running_loss)
    student.eval()
    if channels_last:
        student.to(memory_format=torch.contiguous_format)
        teacher.to(memory_format=torch.contiguous_format)
    teacher.to(teacher_home)
    return DistillResult(steps=config.steps, seconds=seconds,
                         patches_per_second=config.steps * config.batch_size * world / seconds if seconds > 0
                         else float("nan"),
                         final_loss=final["loss"], holdout_agreement=final["holdout_agreement"],
                         holdout_kl=final["holdout_kl"], history=history, config=asdict(config),
                         world_size=world, lr=lr, precision=str(amp_dtype or torch.float32).removeprefix("torch."))


def processes_report(result: DistillResult) -> dict:
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
    return f"the last good checkpoint (step {_saved_step(checkpoint_path)}) is kept in {checkpoint_path}; "


def _saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["step"]


def _format_row(row: dict) -> str:
    parts = [f"step {row['step']}"]
    for key, value in row.items():
        if key != "step":
            parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def accuracy_fn(images: torch.Tensor, labels: torch.Tensor, mean: tuple, std: tuple,
                device: str | torch.device = "cpu") -> Callable[[nn.Module], dict]:
    """An `eval_fn` for `run_distillation` that reports top-1 on labelled data."""
    def evaluate(model: nn.Module) -> dict:
        return {"accuracy": top1(predict(model, images, mean, std, device=device), labels)}
    return evaluate
