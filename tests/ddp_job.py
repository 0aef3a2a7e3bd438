"""A few distillation steps of a tiny CNN, run by test_distributed.py in one process and under torchrun.

Run as a script (under torchrun) it saves, per rank, the student's parameters after every
step and its final state to RECORD_DIR/rank<R>.pt; the run's own files go to OUT_DIR.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_job.py OUT_DIR RECORD_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress1img import DistillConfig, PatchArray, RunConfig, distributed, run_distillation

STEPS = 4
GLOBAL_BATCH = 16
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


class Recording:
    """A patch source that also records the student's parameters whenever a batch is drawn:
    at the start of step k they are what step k - 1 left."""

    def __init__(self, source: PatchArray, student: nn.Module):
        self.source, self.student, self.size = source, student, source.size
        self.at_step: dict[int, torch.Tensor] = {}

    def batch(self, n: int, index: int) -> torch.Tensor:
        self.at_step[index // distributed.world_size()] = flat(self.student)
        return self.source.batch(n, index)


def job(out_dir: Path, batch_size: int, resume: bool = False):
    """(result, parameters after each step, final state dict) of the run.

    Positions index*n .. index*n + n - 1 of a PatchArray make rank r's batch at step k (index
    2k + r, n = B/2) exactly one half of one process's batch k (n = B); with no mixing, no
    flips and BatchNorm in eval mode every patch's loss depends on that patch alone, so DDP's
    averaged gradient is the one-process gradient of the whole batch (in float32: bf16 rounding
    would depend on how the batch is split).
    """
    config = DistillConfig(steps=STEPS, batch_size=batch_size, lr=1e-2, warmup=0.0, mix="none",
                           flip_and_shift=False, freeze_bn_stats=True)
    run = RunConfig(device="cpu", amp=False, eval_every=2, checkpoint_every=2, holdout_size=16, resume=resume,
                    progress=False)
    pixels = np.random.default_rng(0).integers(0, 256, (256, 16, 16, 3), dtype=np.uint8)
    student = tiny_cnn(1)
    source = Recording(PatchArray(pixels, seed=0), student)
    holdout = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    result = run_distillation(tiny_cnn(0), student, source, config, run, mean=MEAN, std=STD, holdout=holdout,
                              checkpoint_dir=out_dir)
    after_each_step = torch.stack([source.at_step[k] for k in range(1, STEPS)] + [flat(student)])
    return result, after_each_step, student.state_dict()


if __name__ == "__main__":
    out_dir, record_dir = Path(sys.argv[1]), Path(sys.argv[2])
    result, after_each_step, state = job(out_dir, GLOBAL_BATCH // distributed.world_size())
    torch.save({"after_each_step": after_each_step, "state": state, "history": result.history,
                "world_size": result.world_size, "global_batch_size": result.global_batch_size},
               record_dir / f"rank{distributed.rank()}.pt")
