"""Projected gradient descent (Madry et al. 2018), Linf and L2, CE or CW-margin loss, with restarts."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..threat import default_step_size, parse_number
from .base import ATTACKS, Attack, AttackParams, ascent_step, project, register_preset
from pydantic import Field, field_validator


class PGDParams(AttackParams):
    steps: int = Field(20, description="gradient steps per restart")
    step_size: float | None = Field(None, description="default: the threat model's rule (eps/4 Linf, "
                                                        "2.5*eps/steps L2)")
    random_start: bool = Field(True, description="start from a uniform point in the eps ball")
    restarts: int = Field(1, description="independent restarts; an example counts as broken if any breaks it")
    loss: Literal["ce", "cw"] = Field("ce", description="ce: cross-entropy; cw: the Carlini-Wagner margin")
    seed: int = Field(0, description="seed of the random starts (drawn per example)")

    _parse = field_validator("step_size", mode="before")(lambda cls, v: parse_number(v))


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin, per example: max_{j != y} z_j - z_y (positive = misclassified)."""
    correct = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - correct


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    return margin_loss(logits, y).sum()


def random_init(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None,
                example_seeds: list[int] | None = None) -> torch.Tensor:
    """A random start in the ball; with ``example_seeds``, example i's start depends on its seed alone."""
    if example_seeds is not None:
        return torch.cat([random_init(x[i:i + 1], norm, eps, torch.Generator().manual_seed(seed))
                          for i, seed in enumerate(example_seeds)])
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=generator, device="cpu") * 2 - 1) * eps
    else:  # uniform direction, radius uniform in [0, eps]
        direction = torch.randn(x.shape, generator=generator, device="cpu")
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        delta = direction * eps * torch.rand(x.shape[0], generator=generator).view(-1, *([1] * (x.dim() - 1)))
    return delta.to(x.device, x.dtype)


def pgd(model, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, step_size: float, steps: int,
        random_start: bool = True, restarts: int = 1, loss: str = "ce",
        generator: torch.Generator | None = None, example_seeds: list[int] | None = None) -> torch.Tensor:
    """Maximize the loss of ``model`` within the ball; with restarts, keep per example the first
    adversarial example that is misclassified (else the last restart's)."""
    best = x.clone()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for restart in range(max(1, restarts)):
        seeds = None if example_seeds is None else [s * 1_000 + restart for s in example_seeds]
        delta = random_init(x, norm, eps, generator, seeds) if random_start else torch.zeros_like(x)
        delta = ((x + delta).clamp(0, 1) - x).detach()
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            # gradient w.r.t. the input only: autograd skips the weight gradients entirely
            (grad,) = torch.autograd.grad(attack_loss(logits, y, loss), delta)
            with torch.no_grad():
                delta = project(delta + ascent_step(grad, norm, step_size), norm, eps)
                delta = (x + delta).clamp(0, 1) - x
        x_adv = (x + delta).detach()
        if restarts <= 1:
            return x_adv
        with torch.no_grad():
            wrong = model(x_adv).argmax(1) != y
        update = ~fooled  # a fooled example keeps the restart that fooled it
        best[update] = x_adv[update]
        fooled |= wrong
    return best


@ATTACKS.register("pgd", description="PGD, Linf or L2, CE or CW loss (steps, step_size, restarts)",
                  source="Madry et al. 2018")
class PGD(Attack):
    Params = PGDParams

    @property
    def cost(self) -> float:
        return float(self.params.steps * max(1, self.params.restarts))

    def dominates(self, other: Attack) -> bool:
        """More steps and restarts of the same loss (and not the very same budget)."""
        if not isinstance(other, PGD):
            return False
        s, w = self.params, other.params
        return (s.loss == w.loss and s.steps >= w.steps and s.restarts >= w.restarts
                and (s.steps, s.restarts) != (w.steps, w.restarts))

    def run(self, model, x, y):
        p = self.params
        threat = self.threat
        step_size = p.step_size if p.step_size is not None else default_step_size(threat.norm, threat.eps, p.steps)
        if not hasattr(self, "_generator"):  # one stream per attack object: batches get different starts
            self._generator = torch.Generator().manual_seed(p.seed)
        example_seeds = None
        if self.example_ids is not None:
            example_seeds = [p.seed * 10_000_019 + int(i) for i in self.example_ids.tolist()]
        return pgd(model, x, y, norm=threat.norm, eps=threat.eps, step_size=step_size, steps=p.steps,
                   random_start=p.random_start, restarts=p.restarts, loss=p.loss, generator=self._generator,
                   example_seeds=example_seeds)


register_preset("pgd10", PGD, "PGD-10, CE, random start: a cheap attack for selecting on validation", steps=10)
register_preset("pgd20", PGD, "PGD-20, CE, random start (step eps/4 for Linf)", steps=20)
register_preset("pgd1000", PGD, "PGD-1000, CE, random start", steps=1000)
register_preset("pgd20-r10", PGD, "PGD-20 with 10 random restarts (per-example first success)", steps=20,
                restarts=10)
register_preset("cw20", PGD, "PGD-20 on the Carlini-Wagner margin loss", steps=20, loss="cw")
