"""The one evaluator: clean accuracy, every attack of the protocol, the per-example worst case.

Per-example correctness (one boolean array per attack) is what is stored; accuracies and the
worst case are derived from it, so adding an attack later never redoes the old ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .attacks import Attack, perturbation_norm
from .errors import AttackError

CLEAN = "clean"


@dataclass
class EvalResult:
    n_examples: int
    correct: dict[str, np.ndarray]  # "clean" and one entry per attack label, bool [n_examples]
    seconds: dict[str, float] = field(default_factory=dict)

    def accuracy(self, label: str) -> float:
        return float(self.correct[label].mean()) if self.n_examples else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return self.accuracy(CLEAN)

    def worst_case(self, labels: Sequence[str] | None = None) -> np.ndarray:
        """Correct under clean input and under every attack: the per-example worst case."""
        labels = [label for label in (labels or self.correct) if label in self.correct]
        worst = np.ones(self.n_examples, dtype=bool)
        for label in labels:
            worst &= self.correct[label]
        return worst

    @property
    def worst_case_accuracy(self) -> float:
        return float(self.worst_case().mean()) if self.n_examples else float("nan")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def attack_correct(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Per-example correctness under ``attack``; checks the attack stayed inside the threat model."""
    correct = []
    eps = attack.threat.eps
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        x_adv = attack(model, xb, yb)
        excess = (perturbation_norm(x_adv - xb, attack.threat.norm) - eps).max().item()
        if excess > 1e-5 or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
            raise AttackError(f"attack {type(attack).__name__} left the threat model "
                              f"(norm exceeds eps by {excess:.2e} or pixels outside [0, 1])")
        with torch.no_grad():
            correct.append((model(x_adv).argmax(1) == yb).cpu())
        if on_batch:
            on_batch(xb.shape[0])
    if not correct:
        raise AttackError(f"attack {type(attack).__name__} produced no results (no examples?)")
    return torch.cat(correct).numpy()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], batch_size: int = 500,
             previous: EvalResult | None = None,
             on_attack: Callable[[str, int], Callable[[int], None] | None] | None = None) -> EvalResult:
    """Evaluate ``model`` (eval mode) on clean inputs and under each attack; labels already in
    ``previous`` are reused, not recomputed."""
    if x.shape[0] == 0:
        raise AttackError("evaluation on zero examples: check evaluation.n_examples and the dataset")
    model.eval()
    result = EvalResult(x.shape[0], {}, {})
    if previous is not None and previous.n_examples == x.shape[0]:
        result.correct.update(previous.correct)
        result.seconds.update(previous.seconds)
    if CLEAN not in result.correct:
        started = time.perf_counter()
        result.correct[CLEAN] = (predict(model, x, batch_size) == y).cpu().numpy()
        result.seconds[CLEAN] = time.perf_counter() - started
    for label, attack in attacks.items():
        if label in result.correct:
            continue
        started = time.perf_counter()
        callback = on_attack(label, x.shape[0]) if on_attack else None
        result.correct[label] = attack_correct(model, attack, x, y, batch_size, callback)
        result.seconds[label] = time.perf_counter() - started
    return result
