"""Transfer diagnostics: how much of the teacher a distilled student took along.

Computed by the runner for runs with a teacher when the suite sets ``evaluation.diagnostics: true``
(off by default), on the first ``evaluation.diagnostics_examples`` test examples, and stored in
the run's ``metrics.json`` under ``diagnostics``:

- ``grad_cosine``: mean over examples of cos(grad_x CE(S(x), y), grad_x CE(T(x), y)), the input
  gradients of student and teacher (what KDIGA aligns); 1 when the student is the teacher.
- ``adv_agreement``: on adversarial examples crafted against the student (PGD-20, the suite's
  threat model), the fraction where the student and the teacher predict the same class.
- ``transfer_accuracy``: the student's accuracy on adversarial examples crafted against the teacher
  (PGD-20): a transfer (black-box) attack. Far above the white-box worst case: the student's own
  gradients are the weak spot; close to it: the student inherited the teacher's weak directions.
- ``local_linearity``: mean over examples of Qin et al. (2019)'s
  gamma(eps, x) = max_{||d|| <= eps} |l(x + d) - l(x) - d . grad_x l(x)|, l the student's CE loss,
  estimated by a few steps of projected gradient ascent on the gap (a lower bound of the max);
  small gamma = the loss is close to its linear approximation in the ball.

All four are plain functions of models and tensors, testable on tiny models.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import ascent_step, pgd_attack, project
from .threat import ThreatModel, default_step_size

ATTACK_STEPS = 20  # PGD-20 for adversarial agreement and the transfer attack
LINEARITY_STEPS = 10


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x of the summed CE loss: per-example input gradients, shape of ``x``."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return grad


def gradient_cosine(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cosine similarity of student and teacher input gradients."""
    return F.cosine_similarity(input_gradients(student, x, y).flatten(1), input_gradients(teacher, x, y).flatten(1),
                               dim=1, eps=1e-12)


def _pgd(model, x, y, threat: ThreatModel, steps: int, generator: torch.Generator) -> torch.Tensor:
    return pgd_attack(model, x, y, norm=threat.norm, eps=threat.eps,
                      step_size=default_step_size(threat.norm, threat.eps, steps), steps=steps,
                      random_start=True, generator=generator)


@torch.no_grad()
def _predict(model, x):
    return model(x).argmax(1)


def adversarial_agreement(student, teacher, x, y, threat: ThreatModel, steps: int = ATTACK_STEPS,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Per example: 1 where student and teacher predict the same class on PGD examples of the student."""
    x_adv = _pgd(student, x, y, threat, steps, generator or torch.Generator().manual_seed(0))
    return (_predict(student, x_adv) == _predict(teacher, x_adv)).float()


def transfer_correct(student, teacher, x, y, threat: ThreatModel, steps: int = ATTACK_STEPS,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per example: 1 where the student is still correct on PGD examples crafted on the teacher."""
    x_adv = _pgd(teacher, x, y, threat, steps, generator or torch.Generator().manual_seed(0))
    return (_predict(student, x_adv) == y).float()


def local_linearity(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, norm: str, eps: float,
                    steps: int = LINEARITY_STEPS, step_size: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example gamma(eps, x) = max_d |l(x+d) - l(x) - d.grad l(x)| over the eps-ball (and [0, 1]),
    estimated by projected gradient ascent from a random start; ``loss`` maps a batch to per-example
    losses. Returns the largest gap met along the way (a lower bound of the max)."""
    from .attacks.pgd import random_init

    step_size = step_size if step_size is not None else eps / 4
    x = x.detach()
    x0 = x.clone().requires_grad_(True)
    base = loss(x0)
    (grad,) = torch.autograd.grad(base.sum(), x0)
    base, grad = base.detach(), grad.detach()

    def gap(delta):
        return (loss(x + delta) - base - (delta * grad).flatten(1).sum(1)).abs()

    delta = random_init(x, norm, eps, generator or torch.Generator().manual_seed(0))
    delta = ((x + delta).clamp(0, 1) - x).detach()
    best = torch.zeros(x.shape[0], device=x.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        value = gap(delta)
        (step,) = torch.autograd.grad(value.sum(), delta)
        best = torch.maximum(best, value.detach())
        with torch.no_grad():
            delta = project(delta + ascent_step(step, norm, step_size), norm, eps)
            delta = (x + delta).clamp(0, 1) - x
    with torch.no_grad():
        best = torch.maximum(best, gap(delta))
    return best


def model_linearity(model: nn.Module, x, y, threat: ThreatModel, steps: int = LINEARITY_STEPS,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    return local_linearity(lambda inputs: F.cross_entropy(model(inputs), y, reduction="none"), x, threat.norm,
                           threat.eps, steps, generator=generator)


def generator(seed: int, diagnostic: str) -> torch.Generator:
    """The random stream of one diagnostic of one run: random starts differ by run seed, never by
    which other diagnostics ran before."""
    offset = {"adv_agreement": 1, "transfer_accuracy": 2, "local_linearity": 3}[diagnostic]
    return torch.Generator().manual_seed(20_000 + 10 * seed + offset)


def diagnose(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             batch_size: int = 500, seed: int = 0) -> dict:
    """All four diagnostics (means over the examples given), models in eval mode."""
    student_mode, teacher_mode = student.training, teacher.training
    student.eval(), teacher.eval()
    sums = {"grad_cosine": 0.0, "adv_agreement": 0.0, "transfer_accuracy": 0.0, "local_linearity": 0.0}
    streams = {name: generator(seed, name) for name in ("adv_agreement", "transfer_accuracy", "local_linearity")}
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            sums["grad_cosine"] += float(gradient_cosine(student, teacher, xb, yb).sum())
            sums["adv_agreement"] += float(adversarial_agreement(student, teacher, xb, yb, threat,
                                                                 generator=streams["adv_agreement"]).sum())
            sums["transfer_accuracy"] += float(transfer_correct(student, teacher, xb, yb, threat,
                                                                generator=streams["transfer_accuracy"]).sum())
            sums["local_linearity"] += float(model_linearity(student, xb, yb, threat,
                                                             generator=streams["local_linearity"]).sum())
    finally:
        student.train(student_mode), teacher.train(teacher_mode)
    n = max(int(x.shape[0]), 1)
    return {**{key: value / n for key, value in sums.items()}, "n_examples": int(x.shape[0]),
            "attack_steps": ATTACK_STEPS, "linearity_steps": LINEARITY_STEPS}
