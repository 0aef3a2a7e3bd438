"""Several processes, one run: torchrun + DistributedDataParallel, and nothing at all when alone.

`torchrun --nproc-per-node N -m compress1img distill ...` (or `compress1img --nproc N
distill ...`) starts N copies of the command. Each copy, a rank, trains on its own
patches; DDP averages the gradients, so the model stays the same in every rank; rank 0
alone writes files and shows progress. Outside torchrun (no WORLD_SIZE in the
environment) every function here returns at once and the single-process path is unchanged.

A rank that fails is not waited for: torchrun's agent stops the others as soon as one
exits with an error, so no rank hangs in a collective.
"""
from __future__ import annotations

import atexit
import gc
import logging
import os
import sys

import torch
from torch import nn

from .errors import InputError

# The commands that train, and so may run in several processes.
TRAINING_COMMANDS = ("distill", "prune", "quantize", "compress", "demo")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """True in a process started by torchrun with more than one process in the run."""
    return world_size() > 1


def is_main() -> bool:
    """Rank 0 writes checkpoints, reports and models, and shows progress."""
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """Under torchrun, "cuda" means the GPU of this process's local rank."""
    if not active() or device.type != "cuda" or device.index is not None:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    # Checked against the node's process count, not this rank's index, so every rank refuses alike.
    if per_node > torch.cuda.device_count():
        raise InputError(f"{per_node} processes per node need {per_node} GPUs, but {torch.cuda.device_count()} "
                         f"are visible here: start at most {torch.cuda.device_count()} (--nproc-per-node)")
    return torch.device("cuda", local_rank)


def init(device: torch.device) -> None:
    """Join the run's process group once: nccl between GPUs, gloo on CPUs. Left at exit, also on errors."""
    if not active() or torch.distributed.is_initialized():
        return
    if not torch.distributed.is_available():
        raise InputError("this PyTorch build has no torch.distributed: run in one process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", device_id=device)
    else:
        torch.distributed.init_process_group("gloo")
    atexit.register(cleanup)


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # A DistributedDataParallel wrapper still in memory (an unreachable cycle, once training is over) when the
        # group goes makes gloo abort the process at exit now and then ("terminate called without an active
        # exception"), after all the work is done: collect it first.
        gc.collect()
        torch.distributed.destroy_process_group()
        # And the group itself, with its worker threads, while the interpreter is whole: one left to its
        # finalization can abort there too (pytorch/pytorch#179291: a gloo thread taking the GIL of a dying
        # interpreter).
        gc.collect()


def backend() -> str | None:
    return torch.distributed.get_backend() if active() and torch.distributed.is_initialized() else None


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel when there are several ranks (itself otherwise).

    DDP starts by copying rank 0's parameters and buffers to every rank and, by default,
    copies rank 0's buffers (BatchNorm running statistics) again before every forward;
    the batch statistics themselves stay per rank.
    """
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def mean_and_any(value: float, flag: bool, device: torch.device) -> tuple[float, bool]:
    """`value` averaged over the ranks and whether `flag` is set in any rank, in one collective."""
    if not active():
        return value, flag
    both = torch.tensor([value, float(flag)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(both)
    return both[0].item() / world_size(), both[1].item() > 0


def share(obj):
    """Rank 0's `obj` (any picklable object) in every rank."""
    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def copy_from_main(module: nn.Module) -> None:
    """Make every parameter and buffer of `module` rank 0's: BatchNorm running statistics
    drift apart in the last step, and the model must end the same everywhere."""
    if not active():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


def check_command(command: str | None) -> None:
    """Only training commands split work between processes; the others would just repeat it."""
    if active() and command not in TRAINING_COMMANDS:
        raise InputError(f"only {', '.join(TRAINING_COMMANDS)} run in several processes, not "
                         f"{command or 'this command'}: run it without torchrun/--nproc")


def launch(nproc: int, argv: list[str], quiet: bool = True) -> int:
    """`python -m compress1img ARGV` in `nproc` processes on this machine, as torchrun --standalone
    starts them; returns the exit code of the first rank that failed (0 if none).

    `quiet` silences the launcher's own log lines: the ranks say what went wrong themselves.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # As torchrun does, but sharing the cores rather than giving every process one thread.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if quiet:
        logging.disable(logging.ERROR)  # this process only launches; the ranks have their own logging
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"compress1img-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "compress1img", *argv)
    except ChildFailedError as e:  # each rank has said why on stderr already
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException:  # Ctrl-C: the agent passed it on to the ranks, which saved a checkpoint
        return 130
    return 0
