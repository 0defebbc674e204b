"""Training-time attack shared by the adversarial methods: PGD on the student, CE to the labels."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..attacks import pgd_attack
from .base import Method, MethodParams, model_mode

AttackMode = Literal["train", "eval"]


class AdversarialParams(MethodParams):
    attack_steps: int | None = Field(None, ge=1, description="default: the threat model's steps")
    attack_step_size: float | None = Field(None, gt=0, description="default: the threat model's step_size")
    attack_mode: AttackMode = Field("eval", description="student BatchNorm mode while crafting x_adv")


class AdversarialMethod(Method):
    """A method that crafts x_adv on the student by PGD maximizing CE to the labels."""

    Params = AdversarialParams

    def craft(self, student, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, threat = self.params, self.threat
        with model_mode(student, p.attack_mode == "train"):
            return pgd_attack(student, x, y, norm=threat.norm, eps=threat.eps,
                              step_size=p.attack_step_size or threat.step_size, steps=p.attack_steps or threat.steps,
                              random_start=True, generator=self.generator)
