"""Fast-ARD: ARD with free adversarial training (Goldblum, Fowl, Feizi, Goldstein; AAAI 2020, Algorithm 2)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .adversarial import FreeMethod
from .ard import ard_loss
from .base import METHODS, MethodParams
from .losses import KL_REDUCTION_HELP, KLReduction


class FastARDParams(MethodParams):
    t: float = Field(30.0, gt=0, description="temperature (ARD's CIFAR-10 value)")
    alpha: float = Field(1.0, ge=0, le=1, description="weight of the distillation term")
    kl_reduction: KLReduction = Field("mean", description=KL_REDUCTION_HELP)
    m: int = Field(4, ge=1, description="replays of each minibatch (epochs are divided by m)")
    step_size: float | None = Field(None, gt=0, description="ascent step of delta (default: eps)")
    delta_grad: Literal["ce", "ard"] = Field(
        "ce", description="ce: delta ascends the student's CE to the labels (the paper; one extra input-only "
                          "backward); ard: it ascends the ARD loss itself (strictly one backward pass)")


@METHODS.register("fast_ard", description="Fast-ARD: ARD loss on x+delta, each batch replayed m times, delta "
                  "kept across replays (free AT)", source="Goldblum et al. AAAI 2020 (Algorithm 2)")
class FastARD(FreeMethod):
    """loss = alpha * t^2 * KL(T_t(x) || S_t(x + delta)) + (1 - alpha) * CE(S(x), y)  (the ARD loss),

    each minibatch replayed m times with a perturbation delta that persists across replays and
    minibatches; epochs are divided by m so the total cost is about that of KD. Per replay one
    student forward on x + delta gives the weight gradient of the ARD loss (the trainer's backward)
    and the input gradient g for delta <- clip_eps(delta + eps * sign(g)), re-projected onto valid
    pixels and applied before the next forward. The teacher sees the clean x only (once per batch,
    shared by the m replays).

    ``delta_grad='ce'`` (default, the paper's Algorithm 2): g = grad_delta CE(S(x + delta), y), the
    student's CE to the labels. It differs from the ARD loss being minimized, so it needs one more
    backward pass, input-only (no weight gradients), through the same forward graph.
    ``delta_grad='ard'``: g = grad_delta of the ARD loss, read off the trainer's single backward pass
    (for alpha=1 that is the CE to the teacher's soft labels at temperature t).
    Defaults: t=30, alpha=1, ``kl_reduction='mean'`` (as ARD), m=4, step = eps. delta is method state,
    saved in checkpoints so a resumed run continues it.

    Not in the official repository (goldblumm/AdversariallyRobustDistillation has ARD only): this
    follows the paper's algorithm, with ARD's official defaults for t, alpha and the reduction.
    """

    Params = FastARDParams
    uses_teacher = True
    official_attack_mode_source = "ARD paper, Algorithm 2 (no official code): delta from the training pass"

    def loss(self, student, batch):
        x_adv = self.perturbation.inputs(batch.x)
        adv_logits = student(x_adv)
        if self.params.delta_grad == "ce":
            # the input-only backward of the labels' CE; the graph stays for the trainer's weight backward
            (grad,) = torch.autograd.grad(F.cross_entropy(adv_logits, batch.y), self.perturbation.leaf,
                                          retain_graph=True)
            self.perturbation.set_grad(grad)
        return ard_loss(self.params, student, batch, adv_logits)
