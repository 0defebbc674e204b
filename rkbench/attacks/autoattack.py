"""AutoAttack (Croce & Hein 2020) through pyautoattack, and its Square attack alone."""
from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from .base import ATTACKS, Attack, AttackParams
from .pgd import PGD

NORMS = {"linf": "Linf", "l2": "L2"}
SUBATTACKS = Literal["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
# rough gradient evaluations per example of each sub-attack as pyautoattack configures it (100
# iterations; the targeted ones over 9 target classes; Square: 5000 queries, two count as one gradient)
SUBATTACK_COST = {"apgd-ce": 100, "apgd-dlr": 100, "fab": 100, "square": 2500, "apgd-t": 900, "fab-t": 900}
VERSIONS = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "fast": ["apgd-ce", "apgd-t"],
            "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]}
RESTARTS = {"plus": {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5}}  # version plus restarts the untargeted attacks


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
    version: Literal["standard", "fast", "plus", "custom"] = Field(
        "standard", description="standard: APGD-CE, APGD-T, FAB-T, Square; fast: APGD-CE, APGD-T; plus: the "
                                "untargeted attacks with 5 restarts too; custom: the list in attacks")
    attacks: list[SUBATTACKS] | None = Field(None, description="with version custom: the sub-attacks to run, in order")
    seed: int = Field(0, description="seed of the random starts and queries (recorded; fixed for reproducibility)")


@ATTACKS.register("autoattack", description="AutoAttack via pyautoattack: standard (APGD-CE, APGD-T, FAB-T, "
                  "Square), fast (APGD-CE + APGD-T) or custom", source="Croce & Hein, ICML 2020")
class AutoAttackEval(Attack):
    """The RobustBench protocol. ``fast`` runs APGD-CE + APGD-T only; ``custom`` takes ``attacks``.
    The seed is fixed (recorded in metrics.json) so a rerun gives the same numbers."""

    Params = AutoAttackParams

    @property
    def cost(self) -> float:
        p = self.params
        attacks = VERSIONS.get(p.version) or p.attacks or VERSIONS["standard"]
        restarts = RESTARTS.get(p.version, {})
        return float(sum(SUBATTACK_COST[a] * restarts.get(a, 1) for a in attacks))

    def dominates(self, other: Attack) -> bool:
        """APGD-CE alone (100 steps, in every version but custom without it) is at least as strong as a
        PGD of at most 100 steps and one restart."""
        runs_apgd_ce = "apgd-ce" in (VERSIONS.get(self.params.version) or self.params.attacks or [])
        return (isinstance(other, PGD) and runs_apgd_ce and other.params.steps <= 100
                and other.params.restarts <= 1)

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
    n_queries: int = Field(5000, ge=1, description="queries per example")
    p_init: float = Field(0.8, gt=0, le=1, description="initial share of the image a square covers")
    seed: int = Field(0, description="seed of the random starts and queries (recorded; fixed for reproducibility)")


@ATTACKS.register("square", description="Square attack alone (black-box, 5000 queries): the gradient-masking check",
                  source="Andriushchenko et al. ECCV 2020")
class Square(Attack):
    """Score-based black-box attack; far stronger than white-box PGD only when gradients mislead."""

    Params = SquareParams
    black_box = True

    @property
    def cost(self) -> float:
        return self.params.n_queries / 2  # forward passes only: two count as one gradient

    def run(self, model, x, y):
        from pyautoattack.square import SquareAttack

        p = self.params
        attack = SquareAttack(model, norm=NORMS[self.threat.norm], n_queries=p.n_queries, eps=self.threat.eps,
                              p_init=p.p_init, n_restarts=1, seed=p.seed, verbose=False, device=x.device,
                              resc_schedule=False)
        return attack.perturb(x, y)
