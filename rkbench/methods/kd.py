"""Knowledge distillation (Hinton, Vinyals, Dean 2015)."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from .base import METHODS, Method, MethodParams
from .losses import KL_REDUCTION_HELP, KLReduction, kl_divergence


class KDParams(MethodParams):
    t: float = Field(4.0, gt=0, description="softmax temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term against CE")
    kl_reduction: KLReduction = Field("batchmean", description=KL_REDUCTION_HELP)


@METHODS.register("kd", description="Hinton KD: alpha*t^2*KL(T_t(x)||S_t(x)) + (1-alpha)*CE(S(x), y)",
                  source="Hinton et al. 2015")
class KD(Method):
    """loss = alpha * t^2 * KL(T_t(x) || S_t(x)) + (1 - alpha) * CE(S(x), y), clean inputs only.

    Defaults t=4, alpha=0.9; the per-sample KL is averaged over the batch (``batchmean``).
    """

    Params = KDParams
    uses_teacher = True

    def loss(self, student, batch):
        p = self.params
        logits = student(batch.x)
        distill = kl_divergence(logits, batch.teacher_logits, p.t, p.kl_reduction)
        return p.alpha * p.t ** 2 * distill + (1 - p.alpha) * F.cross_entropy(logits, batch.y)
