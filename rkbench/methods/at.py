"""PGD adversarial training (Madry et al. 2018)."""
from __future__ import annotations

import torch.nn.functional as F

from .adversarial import AdversarialMethod, AdversarialParams
from .base import METHODS


@METHODS.register("at", description="PGD adversarial training, CE(S(x_adv), y)", source="Madry et al. 2018")
class AT(AdversarialMethod):
    """loss = CE(S(x_adv), y), x_adv = PGD on the student (threat model's steps and step size,
    random start), crafted in the BatchNorm mode of the suite's protocol.

    Official mode: train. Madry's code builds one graph in train mode for both the attack and the
    update, and its batch norm updates the moving averages in place, so every attack step moves them.
    """

    Params = AdversarialParams
    official_attack_mode = "train"
    official_attack_mode_source = ("MadryLab/cifar10_challenge train.py:41 (Model(mode='train'), also the "
                                   "attack's model, train.py:57); model.py:109-110 (is_training, "
                                   "updates_collections=None)")

    def loss(self, student, batch):
        x_adv = self.craft(student, batch.x, batch.y)
        return F.cross_entropy(student(x_adv), batch.y)
