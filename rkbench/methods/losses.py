"""Loss pieces shared by the methods, each written once."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KLReduction = Literal["batchmean", "mean"]
# the description of every method's ``kl_reduction`` parameter
KL_REDUCTION_HELP = ("batchmean: the KL summed over classes, averaged over the batch (the true KL); "
                     "mean: averaged over batch x classes, as nn.KLDivLoss() does by default")


def kl_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """KL(T_t || S_t) = sum_c p_T log(p_T / p_S) per example, softmaxes at temperature t.

    Gradients flow into both arguments: callers detach the target when the official code does
    (TRADES's and IAD's targets S(x) carry gradient; a teacher's logits never do).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)


def reduce_per_sample(per_sample: torch.Tensor, num_classes: int, reduction: KLReduction) -> torch.Tensor:
    """``batchmean``: average over the batch; ``mean``: sum / (batch x classes), like ``nn.KLDivLoss()``."""
    if reduction == "batchmean":
        return per_sample.sum() / per_sample.shape[0]
    return per_sample.sum() / (per_sample.shape[0] * num_classes)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  reduction: KLReduction = "batchmean") -> torch.Tensor:
    """KL(T_t || S_t) = sum_c p_T log(p_T / p_S), softmaxes at temperature t.

    ``batchmean`` is the per-sample KL averaged over the batch (the papers' formula);
    ``mean`` divides the sum by batch x classes, as ``nn.KLDivLoss()``'s default does in the
    official ARD/KDIGA/RSLAD/AdaAD code (1/C of the per-sample KL).
    """
    per_sample = kl_per_sample(student_logits, teacher_logits, temperature)
    return reduce_per_sample(per_sample, student_logits.shape[1], reduction)
