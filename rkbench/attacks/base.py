"""The attack contract: ``attack(model, x, y) -> x_adv`` on batches, inside the threat model.

An attack never changes the model's train/eval mode (the caller chooses it) and never leaves
gradients on the model's weights. What it returns is checked: an attack that returns nothing,
the wrong shape or non-finite pixels raises ``AttackError``, never scores as 0 %.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import AttackError
from ..registry import Registry
from ..threat import ThreatModel


class AttackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attack(ABC):
    """What the evaluator needs from an attack, declared by the attack itself: ``run``; ``cost`` (from its
    own parameters: the cascade runs cheap attacks first); ``dominates`` (which attacks it should never
    score above: the ``stronger_attack_weaker`` flag); ``black_box`` (the gradient-masking check);
    ``warnings`` (its own integrity warnings, e.g. pyautoattack's checks, turned into flags);
    ``needs_source_model`` (it attacks with examples crafted on another model, named by ``source``:
    the evaluation crafts them once with ``craft``, caches them and binds them with ``use``)."""

    Params: type[AttackParams] = AttackParams
    defaults: dict[str, Any] = {}  # presets (pgd20, pgd1000, ...) are subclasses that only change these
    cost_per_example = 1  # the default ``cost``: rough gradient evaluations per example
    black_box = False  # queries the model's outputs only (no gradients)
    needs_source_model = False  # crafts on a source model (``source``); see ``craft`` and ``use``

    def __init__(self, threat: ThreatModel, **options: Any):
        self.threat = threat
        self.params = self.Params(**{**self.defaults, **options})
        self.example_ids: torch.Tensor | None = None
        self.warnings: list[str] = []  # this instance's own, never shared with another attack

    @property
    def cost(self) -> float:
        """Rough gradient evaluations (or two forward passes) per example, from the parameters."""
        return float(self.cost_per_example)

    def dominates(self, other: "Attack") -> bool:
        """Whether this attack should never score higher than ``other`` (up to noise)."""
        return False

    @property
    def source(self) -> str | None:
        """The model this attack crafts on (``needs_source_model``): "teacher", a teacher's name, a run id."""
        return None

    def craft(self, source_model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Adversarial examples for every example of the evaluation set, crafted on ``source_model``."""
        raise NotImplementedError(f"{type(self).__name__} crafts on no source model")

    def use(self, crafted: torch.Tensor) -> None:
        """Bind what ``craft`` made (possibly read back from a cache) before ``run``."""
        raise NotImplementedError(f"{type(self).__name__} crafts on no source model")

    @abstractmethod
    def run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for the batch, inside ``self.threat``."""

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 example_ids: torch.Tensor | None = None) -> torch.Tensor:
        # example_ids (positions in the evaluation set) let random starts depend on the example alone,
        # not on which other examples share the batch: the cascade then matches a full evaluation
        self.example_ids = example_ids
        x_adv = self.run(model, x, y)
        name = type(self).__name__
        if not isinstance(x_adv, torch.Tensor):
            raise AttackError(f"attack {name} returned {type(x_adv).__name__}, not a tensor of adversarial examples")
        if x_adv.shape != x.shape:
            raise AttackError(f"attack {name} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
        if not torch.isfinite(x_adv).all():
            raise AttackError(f"attack {name} returned non-finite pixels")
        return x_adv.detach()


ATTACKS: Registry[type[Attack]] = Registry("attack", base=Attack)


def register_preset(name: str, base: type[Attack], description: str, **defaults: Any) -> type[Attack]:
    """A named configuration of an attack (``pgd20`` = ``pgd`` with 20 steps), one line each."""
    preset = type(name, (base,), {"defaults": {**base.defaults, **defaults}, "__doc__": description,
                                  "__module__": base.__module__})
    ATTACKS.add(name, preset, description=description)
    return preset


def build_attack(name: str, threat: ThreatModel, **options: Any) -> Attack:
    return ATTACKS.get(name)(threat, **options)


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project perturbations onto the norm ball of radius eps (per example)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (eps / norms).clamp(max=1.0)


def ascent_step(grad: torch.Tensor, norm: str, step_size: float) -> torch.Tensor:
    """The step along ``grad``: signed for Linf, normalized per example for L2."""
    if norm == "linf":
        return step_size * grad.sign()
    grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return step_size * grad / grad_norm


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
