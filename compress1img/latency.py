"""Speed where it matters: ONNX Runtime latency, measured for several models in one run.

Machines are noisy, so models are timed in interleaved rounds (A, B, A, B, ...) and
the median per model is kept; compare models only within one call.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import require, require_int
from .runtime import ort_session


@dataclass(frozen=True)
class LatencyConfig:
    """How the models of a run are timed in ONNX Runtime."""

    threads: int | None = None  # intra-op threads; None: as many as torch uses (of all processes under --nproc)
    batches: tuple[int, ...] = (1, 32)  # batch sizes, each timed for every model
    rounds: int = 7  # interleaved rounds (A, B, A, B, ...); the median is kept

    def __post_init__(self):
        if self.threads is not None:
            require_int(self, "threads", 1)
        object.__setattr__(self, "batches", tuple(self.batches))
        require(self, "batches", bool(self.batches) and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                                                            for b in self.batches)
                and len(set(self.batches)) == len(self.batches),
                f"must be different batch sizes of 1 or more, like 1,32 (got {self.batches!r})")
        require_int(self, "rounds", 1)


def compare_latency(models: dict[str, str | Path | bytes], input_size: tuple[int, int, int],
                    batch_sizes: tuple[int, ...] = (1, 32), rounds: int = 7, threads: int | None = None,
                    min_seconds: float = 0.2) -> dict[str, dict[str, float]]:
    """Median milliseconds per forward pass: {model name: {"b1_ms": ..., "b32_ms": ...}} (a key per batch size)."""
    sessions = {name: ort_session(model, threads=threads) for name, model in models.items()}
    results: dict[str, dict[str, float]] = {name: {} for name in models}
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *input_size), dtype=np.float32)
        feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
        repeats = {}
        for name, session in sessions.items():  # warm up, and size each timing to ~min_seconds
            session.run(None, feeds[name])
            started = time.perf_counter()
            session.run(None, feeds[name])
            repeats[name] = max(1, int(min_seconds / max(time.perf_counter() - started, 1e-6)))
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, session in sessions.items():
                started = time.perf_counter()
                for _ in range(repeats[name]):
                    session.run(None, feeds[name])
                samples[name].append((time.perf_counter() - started) / repeats[name] * 1000)
        for name in sessions:
            results[name][f"b{batch}_ms"] = statistics.median(samples[name])
    return results
