"""Where training runs and in which precision: the device, what to call it, and its autocast dtype."""
from __future__ import annotations

import os
import platform

import torch

from . import distributed
from .errors import InputError


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

    CPUs with native bf16 train in bf16 with channels_last (docs/benchmarks.md, "Mixed precision on the CPU");
    other CPUs in float32; GPUs in bf16, or fp16 where bf16 is missing.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None
