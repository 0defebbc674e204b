"""Loss pieces shared by the methods, each written once."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KLReduction = Literal["batchmean", "mean"]


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  reduction: KLReduction = "batchmean") -> torch.Tensor:
    """KL(T_t || S_t) = sum_c p_T log(p_T / p_S), softmaxes at temperature t.

    ``batchmean`` is the per-sample KL averaged over the batch (the papers' formula);
    ``mean`` divides the sum by batch x classes, as ``nn.KLDivLoss()``'s default does in the
    official ARD/KDIGA/RSLAD/AdaAD code (1/C of the per-sample KL).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    pointwise = log_p_teacher.exp() * (log_p_teacher - log_p_student)
    if reduction == "batchmean":
        return pointwise.sum() / student_logits.shape[0]
    return pointwise.mean()
