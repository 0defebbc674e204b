"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan; ICML 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .adversarial import AdversarialMethod, AdversarialParams
from .base import METHODS
from .losses import kl_divergence


class TRADESParams(AdversarialParams):
    beta: float = Field(6.0, ge=0, description="weight of the robust KL term (CIFAR-10: 6)")


@METHODS.register("trades", description="TRADES: CE(S(x), y) + beta*KL(S(x)||S(x_adv)), x_adv maximizing the KL",
                  source="Zhang et al. ICML 2019 (yaodongyu/TRADES)")
class TRADES(AdversarialMethod):
    """loss = CE(S(x), y) + beta * KL(S(x) || S(x_adv)), the KL averaged over the batch (per-sample sum / B).

    x_adv maximizes KL(S(x) || S(x')) over the ball, without labels: S(x) is computed once with the
    student in eval mode (no grad), x' starts at x + 0.001 * N(0, 1) and takes the threat model's
    steps (signed, projected, clipped to [0, 1]), in the protocol's BatchNorm mode (official: eval).
    In the loss both S(x) and S(x_adv) carry gradient (the official code does not detach the target).
    No teacher. Defaults: beta=6; the attack uses the threat model's steps and step size (the paper's
    CIFAR-10 setting is eps 0.031, 10 steps of 0.007: set ``attack_step_size: 0.007``).

    Departures from the official code: the clean pass S(x) is run once in the loss (the code runs it
    twice, moving BatchNorm running statistics twice); the random start is clipped to [0, 1].
    """

    Params = TRADESParams
    official_attack_mode = "eval"
    official_attack_mode_source = "yaodongyu/TRADES trades.py:28 (model.eval()), trades.py:73 (model.train())"

    def loss(self, student, batch):
        with torch.no_grad(), self.crafting(student):
            target = student(batch.x)
        x_adv = self.craft_kl(student, batch.x, target_logits=target)
        logits = student(batch.x)
        return {"ce": F.cross_entropy(logits, batch.y), "kl": self.params.beta * kl_divergence(student(x_adv), logits)}
