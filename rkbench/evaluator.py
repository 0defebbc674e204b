"""The one evaluator: clean accuracy, the attack protocol run as a cascade, the per-example worst
case, and integrity flags.

What is stored is per-example: for each attack, whether each example was still classified
correctly under it and whether the attack was run on it at all. Accuracies, the worst case and
the flags are derived from those arrays, so adding an attack later never redoes the old ones.

The cascade runs attacks cheapest first; an attack not marked ``exact`` only runs on the examples
that are still robust (correct on clean inputs and under every earlier attack): the worst case is
the same as running everything everywhere, its own column is reported as "cascade". An attack
marked ``exact``, and the cheapest attack, run on every example: their columns are accuracies.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import store
from .attacks import Attack, perturbation_norm
from .device import ieee_fp32, in_ieee_fp32
from .errors import AttackError

CLEAN = store.CLEAN
EVALUATED = store.EVALUATED  # suffix of the mask arrays in per_example.npz
LABELS = store.LABELS  # the true class of each example (per-class accuracies in reports; absent in older files)


@dataclass
class EvalResult:
    n_examples: int
    correct: dict[str, np.ndarray]  # "clean" and one per attack label: bool [n]; False where not run
    evaluated: dict[str, np.ndarray] = field(default_factory=dict)  # attack label -> bool [n]: was it run there
    seconds: dict[str, float] = field(default_factory=dict)
    flags: list[dict] = field(default_factory=list)
    labels: np.ndarray | None = None  # int [n]: the true classes
    corruptions: dict | None = None  # a suite's common-corruption accuracies (suite_evaluation.py), not per example
    ieee_fp32: bool | None = None  # every attack of this evaluation ran with TF32 off

    def is_exact(self, label: str) -> bool:
        return label == CLEAN or bool(self.evaluated.get(label, np.zeros(0, bool)).all())

    def accuracy(self, label: str) -> float | None:
        """Accuracy under one attack, or None where the cascade ran it on survivors only."""
        if not self.is_exact(label):
            return None
        return float(self.correct[label].mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct[CLEAN].mean())

    def not_broken(self, label: str) -> np.ndarray:
        """Examples this attack did not break (where it was not run, it broke nothing)."""
        if label == CLEAN:
            return self.correct[CLEAN]
        return self.correct[label] | ~self.evaluated[label]

    def worst_case(self, labels: Sequence[str] | None = None) -> np.ndarray:
        """Correct on clean inputs and under every attack: the per-example worst case."""
        worst = self.correct[CLEAN].copy()
        for label in labels if labels is not None else self.evaluated:
            if label != CLEAN:
                worst &= self.not_broken(label)
        return worst

    @property
    def worst_case_accuracy(self) -> float:
        return float(self.worst_case().mean())

    def arrays(self) -> dict[str, np.ndarray]:
        out = dict(self.correct)
        out.update({label + EVALUATED: mask for label, mask in self.evaluated.items()})
        if self.labels is not None:
            out[LABELS] = self.labels
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "EvalResult":
        labels = arrays.get(LABELS)
        correct = {k: v.astype(bool) for k, v in arrays.items() if not k.endswith(EVALUATED) and k != LABELS}
        evaluated = {k[: -len(EVALUATED)]: v.astype(bool) for k, v in arrays.items() if k.endswith(EVALUATED)}
        for label in correct:  # arrays written before masks existed were run everywhere
            if label != CLEAN and label not in evaluated:
                evaluated[label] = np.ones_like(correct[label], dtype=bool)
        return cls(len(correct.get(CLEAN, [])), correct, evaluated,
                   labels=None if labels is None else labels.astype(np.int64))

    def subset(self, labels: Sequence[str]) -> "EvalResult":
        keep = [CLEAN, *labels]
        return EvalResult(self.n_examples, {k: v for k, v in self.correct.items() if k in keep},
                          {k: v for k, v in self.evaluated.items() if k in keep},
                          {k: v for k, v in self.seconds.items() if k in keep}, labels=self.labels)


class Batches:
    """The evaluation's batches: ``batch_size`` examples at a time, halved and the batch retried when
    the GPU runs out of memory (a line through ``log`` says so); the smaller size holds for the rest
    of the evaluation. Which examples an attack draws for does not depend on the batch (attacks seed
    per example), so the accuracies are those of the full batch size."""

    def __init__(self, batch_size: int, log: Callable[[str], None] | None = None):
        self.size = batch_size
        self.log = log or (lambda line: None)

    def run(self, n: int, step: Callable[[int, int], object]) -> list:
        """``step(start, stop)`` over ``range(n)`` in batches; the results in order."""
        out, start = [], 0
        while start < n:
            stop = min(start + self.size, n)
            try:
                out.append(step(start, stop))
            except torch.cuda.OutOfMemoryError:
                if self.size == 1:
                    raise
                self.size = max(1, self.size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.log(f"out of memory at an evaluation batch of {stop - start}: retrying with batch {self.size}")
                continue
            start = stop
        return out


def _batches(batch_size: "int | Batches") -> Batches:
    return batch_size if isinstance(batch_size, Batches) else Batches(batch_size)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: "int | Batches") -> torch.Tensor:
    return torch.cat(_batches(batch_size).run(x.shape[0], lambda i, j: model(x[i:j]).argmax(1)))


def attack_correct(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: "int | Batches",
                   on_batch: Callable[[int], None] | None = None,
                   example_ids: torch.Tensor | None = None) -> np.ndarray:
    """Per-example correctness under ``attack``; checks the attack stayed inside the threat model."""
    eps = attack.threat.eps
    if example_ids is None:
        example_ids = torch.arange(x.shape[0])

    def step(start: int, stop: int) -> torch.Tensor:
        xb, yb = x[start:stop], y[start:stop]
        x_adv = attack(model, xb, yb, example_ids=example_ids[start:stop].cpu())
        excess = (perturbation_norm(x_adv - xb, attack.threat.norm) - eps).max().item()
        if excess > 1e-5 or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
            raise AttackError(f"attack {type(attack).__name__} left the threat model "
                              f"(norm exceeds eps by {excess:.2e} or pixels outside [0, 1])")
        with torch.no_grad():
            correct = (model(x_adv).argmax(1) == yb).cpu()
        if on_batch:
            on_batch(xb.shape[0])
        return correct

    correct = _batches(batch_size).run(x.shape[0], step)
    if not correct:
        raise AttackError(f"attack {type(attack).__name__} produced no results (no examples?)")
    return torch.cat(correct).numpy()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], batch_size: int = 500,
             previous: EvalResult | None = None, exact: Sequence[str] | None = None, cascade: bool = True,
             on_attack: Callable[[str, int], Callable[[int], None] | None] | None = None,
             on_attack_done: Callable[[EvalResult], None] | None = None,
             log: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate ``model`` (eval mode) clean and under ``attacks``, in IEEE float32 (TF32 off: see
    ``rkbench/device.py``).

    cascade: attacks run cheapest first, each on the examples still robust, except those named in
    ``exact`` (every attack when cascade is off), which run on every example. Arrays in
    ``previous`` (same attack configurations) are reused: only examples never attacked and still
    needing it are attacked. ``on_attack_done(result)`` after each attack that ran (the arrays so
    far: saved, a requeued evaluation resumes at the next attack). On a GPU out of memory the batch
    is halved and retried, a line through ``log`` saying so.
    """
    with ieee_fp32():
        result = _evaluate(model, x, y, attacks, Batches(batch_size, log), previous, exact, cascade, on_attack,
                           on_attack_done)
        result.ieee_fp32 = in_ieee_fp32()
    return result


def _evaluate(model, x, y, attacks, batches: Batches, previous, exact, cascade, on_attack,
              on_attack_done) -> EvalResult:
    n = x.shape[0]
    if n == 0:
        raise AttackError("evaluation on zero examples: check evaluation.n_examples and the dataset")
    model.eval()
    exact = set(attacks) if not cascade else set(exact or ())
    result = EvalResult(n, {}, {}, {}, labels=y.cpu().numpy().astype(np.int64))
    if previous is not None and previous.n_examples == n:
        result.correct.update(previous.correct)
        result.evaluated.update(previous.evaluated)
        result.seconds.update(previous.seconds)
    if CLEAN not in result.correct:
        started = time.perf_counter()
        result.correct[CLEAN] = (predict(model, x, batches) == y).cpu().numpy()
        result.seconds[CLEAN] = time.perf_counter() - started
    robust = result.correct[CLEAN].copy()
    ordered = sorted(attacks.items(), key=lambda item: item[1].cost)
    if ordered:  # the cheapest attack runs everywhere anyway (on the clean survivors): its column stays exact
        exact.add(ordered[0][0])
    for label, attack in ordered:
        if label not in result.correct:
            result.correct[label] = np.zeros(n, dtype=bool)
            result.evaluated[label] = np.zeros(n, dtype=bool)
        wanted = np.ones(n, dtype=bool) if label in exact else robust
        need = wanted & ~result.evaluated[label]
        if need.any():
            started = time.perf_counter()
            index = torch.from_numpy(np.flatnonzero(need)).to(x.device)
            callback = on_attack(label, int(need.sum())) if on_attack else None
            result.correct[label][need] = attack_correct(model, attack, x[index], y[index], batches, callback,
                                                         example_ids=index.cpu())
            result.evaluated[label][need] = True
            result.seconds[label] = result.seconds.get(label, 0.0) + time.perf_counter() - started
            if on_attack_done:
                on_attack_done(result)
        robust &= result.not_broken(label)
    result.flags = integrity_flags(model, x, y, result, attacks, batches)
    return result


# ----------------------------------------------------------------------------------------------
# integrity flags: they never change a number, they explain it


def noise_margin(n: int) -> float:
    """Differences smaller than this are sampling noise, not a finding (2 examples or 0.5 %)."""
    return max(2.0 / n, 0.005)


def input_gradient_health(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: "int | Batches") -> float:
    """Fraction of examples whose input gradient of the CE loss is zero or not finite."""
    def step(start: int, stop: int) -> int:
        xb = x[start:stop].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xb), y[start:stop], reduction="sum"), xb)
        flat = grad.flatten(1)
        return int(((flat.abs().sum(1) == 0) | ~torch.isfinite(flat).all(1)).sum())

    return sum(_batches(batch_size).run(x.shape[0], step)) / x.shape[0]


def integrity_flags(model, x, y, result: EvalResult, attacks: dict[str, Attack],
                    batch_size: "int | Batches") -> list[dict]:
    n, margin, clean = result.n_examples, noise_margin(result.n_examples), result.clean_accuracy
    flags: list[dict] = []
    for label in attacks:
        accuracy = result.accuracy(label)
        if accuracy is not None and accuracy > clean + margin:
            flags.append({"code": "robust_above_clean", "detail": f"{label} {accuracy:.2%} > clean {clean:.2%}"})
    for strong_label, strong in attacks.items():
        for weak_label, weak in attacks.items():
            a_strong, a_weak = result.accuracy(strong_label), result.accuracy(weak_label)
            if a_strong is None or a_weak is None or not strong.dominates(weak):
                continue
            if a_strong > a_weak + margin:
                flags.append({"code": "stronger_attack_weaker",
                              "detail": f"{strong_label} {a_strong:.2%} > {weak_label} {a_weak:.2%}"})
    white_box = [label for label, attack in attacks.items() if not attack.black_box]
    for label, attack in attacks.items():
        if attack.black_box and white_box:
            survivors = result.worst_case(white_box)
            broken = survivors & result.evaluated[label] & ~result.correct[label]
            if broken.sum() / n > max(margin, 0.02):
                flags.append({"code": "square_beats_whitebox",
                              "detail": f"{label} breaks {broken.sum() / n:.2%} of the examples that every "
                                        f"white-box attack left robust (gradient masking?)"})
    bad_gradients = input_gradient_health(model, x, y, batch_size)
    if bad_gradients > 0.05:
        flags.append({"code": "zero_gradients",
                      "detail": f"{bad_gradients:.1%} of examples have a zero or non-finite input gradient"})
    for label, attack in attacks.items():
        for message in attack.warnings:
            flags.append({"code": "autoattack_check", "detail": f"{label}: {message.split(' See ')[0]}"})
    return flags


# ----------------------------------------------------------------------------------------------
# per-example arrays on disk (a run directory, a teacher directory, the `rkbench eval` cache)


def load_per_example(path) -> EvalResult | None:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return EvalResult.from_arrays({key: arrays[key] for key in arrays.files})
    except (OSError, ValueError, KeyError, EOFError):  # absent or damaged: recomputed, never trusted
        return None
    except Exception:  # zipfile.BadZipFile and friends
        return None


def save_per_example(path, result: EvalResult) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **result.arrays())
    store.atomic_write(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")


def reusable_previous(path, metrics: dict | None, threat: dict, attack_configs: dict) -> EvalResult | None:
    """The stored arrays of the attacks configured exactly as now (same threat model), else None."""
    previous = load_per_example(path)
    if previous is None or not metrics or metrics.get("threat") != threat:
        return None
    recorded = metrics.get("attacks") or {}
    return previous.subset([label for label, config in attack_configs.items() if recorded.get(label) == config])
