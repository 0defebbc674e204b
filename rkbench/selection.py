"""Choosing between trained candidates on the validation split, never the test split.

``ValidationScore`` measures a student on ``dataset.validation`` (the examples ``carve_validation``
held out of the training split): clean accuracy and accuracy under the suite's declared cheap
attack (``training.selection.attack``, PGD-10 by default). The trainer calls it every
``selection.every`` epochs and keeps the best epoch's weights (``training.checkpoint: best``);
tuning (``rkbench/tuning.py``) reads the same curve from a trial's record. Nothing here reads
``x_test``: the final evaluation (``suite_evaluation.py``) is the only reader of the test split.

``record_fields`` turns a training result into the run record's fields: ``epoch`` (the epoch whose
weights were evaluated), ``selected_on`` (``last`` or ``validation``), ``selection`` (metric, attack,
examples, the selected value) and ``validation_curve`` (one entry per validated epoch).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from .attacks import build_attack
from .data import TensorDataset
from .errors import ConfigError
from .evaluator import attack_correct, predict
from .threat import ThreatModel

CLEAN, ROBUST = "clean", "robust"


class ValidationScore:
    """``score(model) -> {"clean": a, "robust": b}`` on the validation split; it leaves the model's
    train/eval mode and every random stream of the training as they were (a run validated every
    epoch trains the very same weights as one never validated)."""

    def __init__(self, data: TensorDataset, threat: ThreatModel, selection, device: torch.device,
                 batch_size: int = 500):
        if data.x_val is None or data.y_val is None:
            raise ConfigError("training.checkpoint: best needs a validation split; set dataset.validation")
        self.x, self.y = data.x_val.to(device), data.y_val.to(device)
        # which training examples they are: positions in the source's training split, as a digest
        indices = data.validation_indices
        self.indices_sha256 = (hashlib.sha256(indices.numpy().astype("<i8").tobytes()).hexdigest()[:16]
                               if indices is not None else None)
        self.selection, self.threat, self.device, self.batch_size = selection, threat, device, batch_size

    def describe(self) -> dict:
        """The record's ``selection`` entry (the selected value is added by ``record_fields``)."""
        return {"metric": self.selection.metric, "attack": {"name": self.selection.attack,
                                                            **self.selection.attack_options},
                "every": self.selection.every, "n_examples": int(self.y.shape[0]), "split": "validation",
                "indices_sha256": self.indices_sha256}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                model.eval()
                clean = (predict(model, self.x, self.batch_size) == self.y).float().mean().item()
                # a fresh attack object each time: its random starts depend on the example alone
                attack = build_attack(self.selection.attack, self.threat, **self.selection.attack_options)
                robust = float(attack_correct(model, attack, self.x, self.y, self.batch_size).mean())
        finally:
            model.train(was_training)
        return {CLEAN: clean, ROBUST: robust}


def record_fields(result, checkpoint: str, score: ValidationScore | None) -> dict:
    """The run record's selection fields from a ``TrainResult``."""
    fields = {"epoch": result.selected_epoch, "selected_on": "validation" if checkpoint == "best" else "last"}
    if result.curve:
        fields["validation_curve"] = [dict(entry) for entry in result.curve]
    if score is not None:
        fields["selection"] = {**score.describe(), "value": result.selected_value}
    return fields
