"""Measuring models: top-1 accuracy on labelled data and teacher-student agreement."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

Logits = Callable[[torch.Tensor], torch.Tensor]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NHWC or float [0, 1] NCHW -> float32 NCHW normalised with mean/std."""
    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).float().div_(255)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


@torch.no_grad()
def predict(model: nn.Module | Logits, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
            batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Logits (N, classes) as float32 on the CPU for uint8 NHWC images (or float [0,1] NCHW)."""
    if isinstance(model, nn.Module):
        model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        outputs.append(model(x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent, from the count of hits (exact: 83 of 100 is 83.0, not float32's 82.99999...)."""
    return 100.0 * int((logits.argmax(1) == labels).sum()) / len(labels) if len(labels) else float("nan")


def agreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Percent of inputs on which student and teacher give the same top-1 class."""
    return top1(student_logits, teacher_logits.argmax(1))


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> float:
    """KL(teacher || student) of the softmax at `temperature`, mean over inputs (nats)."""
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=1)
    s = torch.log_softmax(student_logits.float() / temperature, dim=1)
    return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean").item()
