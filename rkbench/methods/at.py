"""PGD adversarial training (Madry et al. 2018)."""
from __future__ import annotations

import torch.nn.functional as F

from .adversarial import AdversarialMethod, AdversarialParams
from .base import METHODS


@METHODS.register("at", description="PGD adversarial training, CE(S(x_adv), y)", source="Madry et al. 2018")
class AT(AdversarialMethod):
    """loss = CE(S(x_adv), y), x_adv = PGD on the student (threat model's steps and step size,
    random start), crafted with the student in eval mode (``attack_mode``)."""

    Params = AdversarialParams

    def loss(self, student, batch):
        x_adv = self.craft(student, batch.x, batch.y)
        return F.cross_entropy(student(x_adv), batch.y)
