"""What the student minimises: KL(teacher || student) on softmax(logits / T), as in "The
Augmented Image Prior" (Asano & Saeed, ICLR 2023), and the paper's degraded-teacher variants.

A loss function here is anything called as `loss_fn(student_logits, teacher_logits) -> scalar`;
`run_distillation` takes one, so an experiment passes its own instead of patching this module.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TEACHER_SIGNALS = ("soft", "topk", "hard")


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


def kl_loss(config) -> LossFn:
    """The loss a DistillConfig describes (temperature, teacher signal, top-k, T^2 scaling)."""
    def loss_fn(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return distillation_loss(student_logits, teacher_logits, config.temperature, config.teacher_signal,
                                 config.topk, config.scale_loss_by_t2)
    return loss_fn
