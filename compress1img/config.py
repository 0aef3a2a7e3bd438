"""Settings shared by every command, and how every settings class reports a bad value.

Each settings class is a small frozen dataclass that checks itself when it is made
(`__post_init__`), so a config that exists is a valid one. A bad value raises
`ConfigError`, which names the class and the field (`DistillConfig.steps must be at
least 1 (got 0)`); the command line reports the same problem under its option's name
(`--steps must be at least 1 (got 0)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import InputError


class ConfigError(InputError):
    """A settings field holds a value it cannot take.

    `problem` is the message after the field's name; it may name other fields as `{}`
    placeholders, filled in from `mentions` in the caller's spelling (field or option).
    """

    def __init__(self, owner: str, field: str, problem: str, mentions: tuple[str, ...] = ()):
        self.owner, self.field, self.problem, self.mentions = owner, field, problem, mentions
        super().__init__(self.render(lambda name: name, first=f"{owner}.{field}"))

    def render(self, spell: Callable[[str], str], first: str | None = None) -> str:
        """The message with every field spelt by `spell` (the CLI passes field -> --option)."""
        return f"{first or spell(self.field)} {self.problem.format(*map(spell, self.mentions))}"


def require(config: Any, field: str, ok: bool, problem: str, *mentions: str) -> None:
    """Raise ConfigError for `config.field` unless `ok`."""
    if not ok:
        raise ConfigError(type(config).__name__, field, problem, mentions)


def require_choice(config: Any, field: str, allowed: Iterable[str]) -> None:
    value = getattr(config, field)
    allowed = tuple(allowed)
    require(config, field, value in allowed, f"must be one of {', '.join(allowed)} (got {value!r})")


def require_int(config: Any, field: str, minimum: int, problem: str | None = None) -> None:
    value = getattr(config, field)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(config, field, ok, problem or f"must be at least {minimum} (got {value})")


def require_positive(config: Any, field: str, what: str = "a positive number") -> None:
    value = getattr(config, field)
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    require(config, field, ok, f"must be {what} (got {value})")


@dataclass(frozen=True)
class RunConfig:
    """How a run is carried out, whatever it computes: where, with which seed, what it keeps and shows."""

    device: str = "auto"  # cpu, cuda (this rank's GPU under torchrun) or auto
    seed: int = 0  # patches, augmentation, initialisation and the held-out patches all derive from it
    holdout_size: int = 1024  # fixed held-out patches on which agreement with the teacher is measured
    eval_every: int = 250  # training steps between measurements on the held-out patches (and eval data)
    checkpoint_every: int = 250  # training steps between resumable checkpoints (with an output folder)
    out: Path | None = None  # output folder; None keeps everything in memory
    overwrite: bool = False  # replace an earlier run's results in `out`
    resume: bool = False  # continue an interrupted run from the checkpoints it left in `out`
    progress: bool = True  # progress bars and per-evaluation lines on stderr
    amp: bool = True  # mixed precision where the hardware has it (see devices.autocast_dtype)
    compile: bool = False  # torch.compile the model being trained (pays off on GPUs)

    def __post_init__(self):
        if self.out is not None and not isinstance(self.out, Path):
            object.__setattr__(self, "out", Path(self.out))
        require(self, "device", isinstance(self.device, str) and bool(self.device),
                f"must name a device: cpu, cuda or auto (got {self.device!r})")
        require_int(self, "seed", 0, f"must be a whole number, 0 or more (got {self.seed})")
        for field in ("holdout_size", "eval_every", "checkpoint_every"):
            require_int(self, field, 1)
