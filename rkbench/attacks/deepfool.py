"""DeepFool (Moosavi-Dezfooli et al. 2016), Linf variant, reported at the threat model's eps."""
from __future__ import annotations

import torch
from pydantic import Field

from .base import ATTACKS, Attack, AttackParams, project


class DeepFoolParams(AttackParams):
    steps: int = Field(50, ge=1, description="DeepFool iterations at most")
    overshoot: float = Field(0.02, ge=0, description="factor by which each step overshoots the boundary")


@ATTACKS.register("deepfool", description="DeepFool, Linf variant; the minimal perturbation is projected "
                  "onto the eps ball", source="Moosavi-Dezfooli et al. CVPR 2016")
class DeepFool(Attack):
    """Iteratively step to the nearest linearized decision boundary (Linf: r = |f_k|/||w_k||_1 sign(w_k),
    L2: r = |f_k| w_k/||w_k||_2^2), with overshoot. DeepFool looks for the *smallest* perturbation,
    unbounded; as in ARD Table 11, accuracy is reported at the threat model's eps by projecting
    the found perturbation onto the ball (an example counts as broken only if the projected
    point is misclassified)."""

    Params = DeepFoolParams
    classes = 10  # the cost assumes 10 classes (the attack learns the true number only when it runs)

    @property
    def cost(self) -> float:
        return float(self.params.steps * self.classes)  # up to `steps` iterations x one gradient per class

    def run(self, model, x, y):
        p, threat = self.params, self.threat
        dual = 1.0 if threat.norm == "linf" else 2.0  # norm of the gradient that defines the distance
        shape = (-1, *([1] * (x.dim() - 1)))
        x_adv = x.clone()
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        total = torch.zeros_like(x)
        for _ in range(p.steps):
            if not active.any():
                break
            xa = x_adv[active].clone().requires_grad_(True)
            ya = y[active]
            logits = model(xa)
            still = logits.argmax(1) == ya
            if not still.any():
                active[active.clone()] = False
                break
            num_classes = logits.shape[1]
            grads = []
            for k in range(num_classes):
                (g,) = torch.autograd.grad(logits[:, k].sum(), xa, retain_graph=k < num_classes - 1)
                grads.append(g)
            grads = torch.stack(grads, 1)  # [B, C, ...]
            with torch.no_grad():
                index = torch.arange(xa.shape[0], device=x.device)
                w = grads - grads[index, ya][:, None]
                f = logits - logits[index, ya][:, None]
                w_norm = w.flatten(2).norm(p=dual, dim=2).clamp_min(1e-12)
                distance = f.abs() / w_norm
                distance[index, ya] = float("inf")
                k_best = distance.argmin(1)
                w_best, d_best = w[index, k_best], distance[index, k_best]
                if threat.norm == "linf":
                    r = (d_best + 1e-4).view(shape) * w_best.sign()
                else:
                    r = (d_best + 1e-4).view(shape) * w_best / w_norm[index, k_best].view(shape)
                idx = active.nonzero().squeeze(1)
                step_idx = idx[still]
                total[step_idx] += r[still]
                x_adv[step_idx] = (x[step_idx] + (1 + p.overshoot) * total[step_idx]).clamp(0, 1)
                active[idx[~still]] = False
        delta = project(x_adv - x, threat.norm, threat.eps)
        return (x + delta).clamp(0, 1).detach()
