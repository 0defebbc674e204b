"""The method contract: a loss over a batch. The trainer, the attacker and the evaluator are shared.

A method declares what it needs from the trainer (teacher logits and/or penultimate features on
the clean batch, computed once per batch under no_grad in eval mode) and returns a scalar loss, or
named terms (``{"kl": ..., "ce": ...}``) that the trainer sums in their order, logs per epoch and
stores in the run's metrics. It never runs its own loop and never knows which dataset it is on.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, Mapping, Union

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..registry import Registry
from ..threat import ThreatModel


LossTerms = Mapping[str, torch.Tensor]  # named scalar terms; the loss is their sum, left to right
LossOutput = Union[torch.Tensor, LossTerms]


def total_loss(output: LossOutput) -> tuple[torch.Tensor, LossTerms | None]:
    """(the scalar to backpropagate, the named terms or None): terms are summed in their order,
    ``((a + b) + c)``, so a method written as ``a + b + c`` gives the bit-identical loss."""
    if isinstance(output, torch.Tensor):
        return output, None
    terms = list(output.values())
    if not terms:
        raise ValueError("a method returned no loss terms")
    loss = terms[0]
    for term in terms[1:]:
        loss = loss + term
    return loss, output


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    teacher_logits: torch.Tensor | None = None  # teacher(x) on the clean batch, no grad, eval mode
    teacher_features: torch.Tensor | None = None  # teacher's penultimate features, likewise
    teacher: nn.Module | None = None  # frozen teacher, for methods that query it on other inputs
    epoch: int = 0
    epochs: int = 1


class Method(ABC):
    """Every hook a method may use; only ``loss`` must be written."""

    Params: type[MethodParams] = MethodParams
    uses_teacher: bool = False  # needs a teacher; the trainer fills Batch.teacher_logits (see below)
    uses_teacher_features: bool = False  # ... and Batch.teacher_features
    replays: int = 1  # the "free" family replays each batch m times (epochs are divided by m)
    holdout: int = 0  # training examples the trainer withholds from training and hands to end_epoch

    @property
    def needs_teacher_logits(self) -> bool:
        """Whether the loss reads ``Batch.teacher_logits``: only then does the trainer run the teacher
        on the clean batch (a method that queries the teacher itself, on other inputs, says False)."""
        return self.uses_teacher

    def __init__(self, params: MethodParams, threat: ThreatModel, seed: int = 0):
        self.params = params
        self.threat = threat
        # one random stream per run for training-time attacks (random starts differ across batches)
        self.generator = torch.Generator().manual_seed(10_000 + seed)

    def prepare(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once before the optimizer is built: a method that adds trainable modules to the
        student (e.g. a feature projection) attaches them here so that they are optimized and saved."""

    @abstractmethod
    def loss(self, student: nn.Module, batch: Batch) -> LossOutput:
        """The training loss on one batch: a scalar, or named scalar terms (see ``total_loss``)."""

    def end_epoch(self, student: nn.Module, epoch: int, held: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
        """Called after each epoch with the ``holdout`` withheld training examples (or None); return True
        to stop training now (e.g. FGSM-RS early stopping). The method may restore earlier weights."""
        return False

    def finish(self, student: nn.Module) -> None:
        """Called once after the last epoch: detach what ``prepare`` attached that is no part of the
        trained student (e.g. a feature projection), so the saved student loads into its bare architecture."""


METHODS: Registry[type[Method]] = Registry("method", base=Method)


def build_method(name: str, params: dict | None, threat: ThreatModel, seed: int = 0) -> Method:
    cls = METHODS.get(name)
    return cls(cls.Params(**(params or {})), threat, seed)


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Run a block with the model in train or eval mode, then restore the mode it had."""
    was_training = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(was_training)
