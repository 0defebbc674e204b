"""Training-time adversaries shared by the adversarial methods, each written once.

- ``AdversarialMethod.craft``: PGD on the student maximizing CE to the labels (AT, ARD, IAD).
- ``AdversarialMethod.craft_kl`` / ``kl_attack``: PGD maximizing KL(P || S(x')) without labels, from
  x + 0.001 * N(0, 1) (TRADES, RSLAD, AdaAD); ``noise_start_attack`` is that loop for any objective
  (MTARD: CE to the labels).
- ``FreePerturbation``: the persistent perturbation of the "free" family (Free-AT, Fast-ARD).
"""
from __future__ import annotations

from typing import Callable

import torch
from pydantic import Field
from torch import nn

from ..attacks import ascent_step, pgd_attack, project
from ..threat import ThreatModel
from .base import FREE, Method, MethodParams, model_mode
from .losses import kl_divergence


class AdversarialParams(MethodParams):
    attack_steps: int | None = Field(None, ge=1, description="default: the threat model's steps")
    attack_step_size: float | None = Field(None, gt=0, description="default: the threat model's step_size")


def ascend(x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, norm: str, eps: float,
           step_size: float) -> torch.Tensor:
    """One ascent step from ``x_adv`` along ``grad`` (signed for Linf, normalized per example for L2),
    projected onto the eps ball around ``x`` and onto valid pixels [0, 1]."""
    return (x + project(x_adv + ascent_step(grad, norm, step_size) - x, norm, eps)).clamp(0, 1)


def noise_start_attack(x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], threat: ThreatModel, *,
                       steps: int, step_size: float, generator: torch.Generator | None) -> torch.Tensor:
    """x' maximizing ``objective(x')`` in the threat model's ball, from x + 0.001 * N(0, 1) clipped to
    [0, 1] (the official TRADES-style codes leave the start unclipped). The objective's reduction
    only scales the gradient, which the signed (or normalized) step ignores."""
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    x_adv = (x + 0.001 * noise).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        # gradient w.r.t. the input only: no weight gradients are computed or left behind
        (grad,) = torch.autograd.grad(objective(x_adv), x_adv)
        with torch.no_grad():
            x_adv = ascend(x, x_adv, grad, threat.norm, threat.eps, step_size)
    return x_adv.detach()


def kl_attack(student: nn.Module, x: torch.Tensor, threat: ThreatModel, *, steps: int, step_size: float,
              generator: torch.Generator | None, target_logits: torch.Tensor | None = None,
              teacher: nn.Module | None = None) -> torch.Tensor:
    """x' maximizing KL(P || S(x')) in the threat model's ball, without labels (``noise_start_attack``).

    P = softmax(``target_logits``), fixed (TRADES: S(x); RSLAD: T(x)), or with ``teacher``,
    softmax(teacher(x')) recomputed at every step with the gradient through both models (AdaAD).
    The caller chooses the student's train/eval mode.
    """
    def objective(x_adv):
        return kl_divergence(student(x_adv), teacher(x_adv) if teacher is not None else target_logits)

    return noise_start_attack(x, objective, threat, steps=steps, step_size=step_size, generator=generator)


class AdversarialMethod(Method):
    """A method that crafts x_adv on the student: PGD on CE to the labels (``craft``) or on a KL
    divergence without labels (``craft_kl``), with the attack settings of ``AdversarialParams``, the
    student in the BatchNorm mode of the suite's protocol (``self.attack_mode``; see ``crafting``)."""

    Params = AdversarialParams
    # each built-in method declares its official code's mode; a plugin that declares none crafts in eval
    official_attack_mode = "eval"

    def attack_settings(self) -> tuple[int, float]:
        p, threat = self.params, self.threat
        return p.attack_steps or threat.steps, p.attack_step_size or threat.step_size

    def crafting(self, student: nn.Module):
        """The student in the protocol's mode while crafting: train (batch statistics, running
        statistics move) or eval (running statistics, untouched); the mode it had is restored after."""
        return model_mode(student, self.attack_mode == "train")

    def craft(self, student, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        steps, step_size = self.attack_settings()
        threat = self.threat
        with self.crafting(student):
            return pgd_attack(student, x, y, norm=threat.norm, eps=threat.eps, step_size=step_size, steps=steps,
                              random_start=True, generator=self.generator)

    def craft_kl(self, student, x: torch.Tensor, target_logits: torch.Tensor | None = None,
                 teacher: nn.Module | None = None) -> torch.Tensor:
        steps, step_size = self.attack_settings()
        with self.crafting(student):
            return kl_attack(student, x, self.threat, steps=steps, step_size=step_size, generator=self.generator,
                             target_logits=target_logits, teacher=teacher)


class FreePerturbation:
    """The persistent perturbation delta of the "free" family (Shafahi et al. 2019; ARD's Fast-ARD).

    One delta row per batch slot, zero at the start, kept across replays and minibatches (a smaller
    last batch uses the first rows), always inside the eps ball and re-projected onto valid pixels
    for the minibatch at hand. ``inputs(x)`` returns x + delta through a leaf that requires grad, so
    the trainer's one backward pass leaves the input gradient on that leaf beside the weight
    gradients; the ascent delta <- proj(delta + step * sign(grad)) is applied at the next use (or
    when the state is saved), i.e. before the next forward pass, as in the official loop.
    ``set_grad`` replaces that gradient by another one (Fast-ARD's CE to the labels).
    """

    def __init__(self, threat: ThreatModel, step_size: float):
        self.norm, self.eps, self.step_size = threat.norm, threat.eps, step_size
        self.delta: torch.Tensor | None = None
        self._x: torch.Tensor | None = None
        self._leaf: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        self.flush()
        n = x.shape[0]
        if self.delta is None or self.delta.shape[1:] != x.shape[1:] or self.delta.shape[0] < n:
            grown = torch.zeros((n, *x.shape[1:]), device=x.device, dtype=x.dtype)
            if self.delta is not None and self.delta.shape[1:] == x.shape[1:]:
                grown[:self.delta.shape[0]] = self.delta
            self.delta = grown
        rows = ((x + self.delta[:n]).clamp(0, 1) - x).detach()
        self._x, self._leaf = x.detach(), rows.requires_grad_(True)
        return x + self._leaf

    @property
    def leaf(self) -> torch.Tensor | None:
        """The delta rows of the last ``inputs`` call, the leaf whose gradient drives the next step."""
        return self._leaf

    def set_grad(self, grad: torch.Tensor) -> None:
        self._grad = grad.detach()

    def flush(self) -> None:
        """Apply the pending ascent step (from the last backward pass) to delta."""
        if self._leaf is None:
            return
        x, rows = self._x, self._leaf.detach()
        grad = self._grad if self._grad is not None else self._leaf.grad
        if grad is not None:
            with torch.no_grad():
                rows = ascend(x, x + rows, grad, self.norm, self.eps, self.step_size) - x
        self.delta[:x.shape[0]] = rows
        self._x = self._leaf = self._grad = None

    def state(self) -> dict:
        self.flush()
        return {"delta": None if self.delta is None else self.delta.clone()}

    def load_state(self, state: dict) -> None:
        self.delta = state.get("delta")
        self._x = self._leaf = self._grad = None


class FreeMethod(Method):
    """Base of the "free" family: each batch replayed ``params.m`` times through one persistent
    ``FreePerturbation`` (step ``params.step_size``, default eps), saved with every checkpoint.
    Its perturbation ascends the gradient of the training pass itself (train mode), so the
    protocol's attack mode cannot apply: the family is exempt and reports say so."""

    official_attack_mode = FREE

    def __init__(self, params, threat, seed=0):
        super().__init__(params, threat, seed)
        self.replays = params.m
        self.perturbation = FreePerturbation(threat, params.step_size or threat.eps)

    def state(self):
        return self.perturbation.state()

    def load_state(self, state):
        self.perturbation.load_state(state)
