"""AutoAttack (Croce & Hein 2020) through pyautoattack, and its Square attack alone."""
from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from .base import ATTACKS, Attack, AttackParams

NORMS = {"linf": "Linf", "l2": "L2"}
SUBATTACKS = Literal["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]


class _Capture(logging.Handler):
    """Collects pyautoattack's own warnings (randomized/dynamic defence, zero gradients, Square
    beating the white-box attacks) so the evaluator can turn them into integrity flags."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


class AutoAttackParams(AttackParams):
    version: Literal["standard", "fast", "plus", "custom"] = "standard"
    attacks: list[SUBATTACKS] | None = None  # with version: custom
    seed: int = 0


@ATTACKS.register("autoattack", description="AutoAttack via pyautoattack: standard (APGD-CE, APGD-T, FAB-T, "
                  "Square), fast (APGD-CE + APGD-T) or custom", source="Croce & Hein, ICML 2020")
class AutoAttackEval(Attack):
    """The RobustBench protocol. ``fast`` runs APGD-CE + APGD-T only; ``custom`` takes ``attacks``.
    The seed is fixed (recorded in metrics.json) so a rerun gives the same numbers."""

    Params = AutoAttackParams
    cost_per_example = 4000

    def __init__(self, threat, **options):
        super().__init__(threat, **options)
        self.warnings: list[str] = []

    def run(self, model, x, y):
        from pyautoattack import AutoAttack

        p = self.params
        version, attacks = p.version, p.attacks
        if version == "fast":
            version, attacks = "custom", ["apgd-ce", "apgd-t"]
        adversary = AutoAttack(model, norm=NORMS[self.threat.norm], eps=self.threat.eps, version=version,
                               attacks=attacks if version == "custom" else None, seed=p.seed, device=x.device)
        if version == "custom":
            adversary.apgd_targeted.n_target_classes = 9
            adversary.fab.n_target_classes = 9
        handler = _Capture()
        adversary.logger.addHandler(handler)
        try:
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
        finally:
            adversary.logger.removeHandler(handler)
        self.warnings.extend(m for m in handler.messages if m not in self.warnings)
        return x_adv


class SquareParams(AttackParams):
    n_queries: int = Field(5000, ge=1)
    p_init: float = Field(0.8, gt=0, le=1)
    seed: int = 0


@ATTACKS.register("square", description="Square attack alone (black-box, 5000 queries): the gradient-masking check",
                  source="Andriushchenko et al. ECCV 2020")
class Square(Attack):
    """Score-based black-box attack; far stronger than white-box PGD only when gradients mislead."""

    Params = SquareParams
    cost_per_example = 2500  # forward passes only

    def run(self, model, x, y):
        from pyautoattack.square import SquareAttack

        p = self.params
        attack = SquareAttack(model, norm=NORMS[self.threat.norm], n_queries=p.n_queries, eps=self.threat.eps,
                              p_init=p.p_init, n_restarts=1, seed=p.seed, verbose=False, device=x.device,
                              resc_schedule=False)
        return attack.perturb(x, y)
