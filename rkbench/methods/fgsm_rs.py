"""FGSM with random start, "Fast is better than free" (Wong, Rice, Kolter; ICLR 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..attacks import pgd_attack
from .base import METHODS, Method, MethodParams, model_mode


class FGSMRSParams(MethodParams):
    step_factor: float = Field(1.25, gt=0, description="FGSM step = step_factor * eps (10/255 at 8/255)")
    early_stop: bool = Field(False, description="stop when PGD accuracy on held-out training examples collapses")
    early_stop_examples: int = Field(128, ge=1, description="training examples held out for the check")
    early_stop_drop: float = Field(0.2, gt=0, le=1, description="stop when accuracy falls by more than this")


@METHODS.register("fgsm_rs", description="FGSM-RS: CE(S(x_adv), y), x_adv one FGSM step of 1.25*eps from a "
                  "uniform random start", source="Wong et al. ICLR 2020 (locuslab/fast_adversarial)")
class FGSMRS(Method):
    """loss = CE(S(x_adv), y), x_adv = x + delta with delta_0 ~ U(-eps, eps) (clipped to valid pixels),
    then one signed step of step_factor * eps on the student's CE, projected onto the ball and onto
    [0, 1]. Two forward/backward passes per batch. The attack runs in the protocol's BatchNorm mode
    (official: train, the mode the official loop keeps for the whole epoch). Defaults: step 1.25 * eps,
    no teacher.

    Optional early stopping against catastrophic overfitting (``early_stop``, off by default as in
    the official script): after each epoch, PGD-5 (the threat model's step size, random start) on
    ``early_stop_examples`` training examples that the trainer holds out of training; when that
    accuracy drops by more than ``early_stop_drop`` from the previous epoch's, training stops and
    the previous epoch's weights are restored.

    Departures of the official code (``CIFAR10/train_fgsm.py``), decided here: its check runs on the
    first minibatch of each epoch (trained on) with the model in train mode (moving BatchNorm
    statistics); rkbench checks held-out examples in eval mode. Its recipe (15 epochs, cyclic LR
    up to 0.2, mixed precision) belongs to the suite.
    """

    Params = FGSMRSParams
    official_attack_mode = "train"
    official_attack_mode_source = ("locuslab/fast_adversarial CIFAR10/train_fgsm.py:73 (model.train() once, "
                                   "before training), train_fgsm.py:112 (the FGSM pass)")

    def __init__(self, params, threat, seed=0):
        super().__init__(params, threat, seed)
        self.holdout = params.early_stop_examples if params.early_stop else 0
        self.previous_accuracy = 0.0
        self.previous_weights: dict | None = None

    def loss(self, student, batch):
        threat = self.threat
        with model_mode(student, self.attack_mode == "train"):
            x_adv = pgd_attack(student, batch.x, batch.y, norm=threat.norm, eps=threat.eps,
                               step_size=self.params.step_factor * threat.eps, steps=1, random_start=True,
                               generator=self.generator)
        return F.cross_entropy(student(x_adv), batch.y)

    def end_epoch(self, student, epoch, held):
        if not self.params.early_stop or held is None:
            return False
        x, y, threat = held[0], held[1], self.threat
        with model_mode(student, False):
            x_adv = pgd_attack(student, x, y, norm=threat.norm, eps=threat.eps, step_size=threat.step_size,
                               steps=5, random_start=True, generator=self.generator)
            with torch.no_grad():
                accuracy = (student(x_adv).argmax(1) == y).float().mean().item()
        if accuracy - self.previous_accuracy < -self.params.early_stop_drop:
            if self.previous_weights is not None:
                student.load_state_dict(self.previous_weights)
            return True
        self.previous_accuracy = accuracy
        self.previous_weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return False

    def state(self):
        return {"previous_accuracy": self.previous_accuracy, "previous_weights": self.previous_weights}

    def load_state(self, state):
        self.previous_accuracy = state["previous_accuracy"]
        self.previous_weights = state["previous_weights"]
