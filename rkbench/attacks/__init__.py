"""Attacks (one file each): ``attack(model, x, y) -> x_adv`` on batches."""
from . import autoattack, deepfool, mifgsm, pgd, transfer  # noqa: F401  (registers the built-in attacks)
from .base import (ATTACKS, Attack, AttackParams, ascent_step, build_attack, perturbation_norm, project,
                   register_preset)
from .pgd import pgd as pgd_attack

__all__ = ["ATTACKS", "Attack", "AttackParams", "build_attack", "perturbation_norm", "project", "register_preset",
           "pgd_attack"]
