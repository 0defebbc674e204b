"""Momentum iterative FGSM (Dong et al. 2018), Linf and L2."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import ATTACKS, Attack, AttackParams, project


class MIFGSMParams(AttackParams):
    steps: int = Field(20, ge=1, description="iterations (step eps/steps each)")
    decay: float = Field(1.0, ge=0, description="momentum decay factor mu")


@ATTACKS.register("mifgsm", description="momentum iterative FGSM, 20 steps of eps/steps, decay 1.0",
                  source="Dong et al. CVPR 2018")
class MIFGSM(Attack):
    """g <- decay * g + grad / ||grad||_1; x <- proj(x + (eps/steps) * sign(g)) (Linf; L2 uses g/||g||_2)."""

    Params = MIFGSMParams

    @property
    def cost(self) -> float:
        return float(self.params.steps)

    def run(self, model, x, y):
        p, threat = self.params, self.threat
        step = threat.eps / p.steps
        shape = (-1, *([1] * (x.dim() - 1)))
        momentum = torch.zeros_like(x)
        delta = torch.zeros_like(x)
        for _ in range(p.steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
            with torch.no_grad():
                momentum = p.decay * momentum + grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(shape)
                if threat.norm == "linf":
                    update = momentum.sign()
                else:
                    update = momentum / momentum.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
                delta = project(delta + step * update, threat.norm, threat.eps)
                delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()
