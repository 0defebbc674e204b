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
from typing import ClassVar, Iterator, Mapping, Union

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..registry import Registry
from ..threat import ThreatModel


# The suite's training-attack protocol (``protocol.attack_mode``): the BatchNorm mode of the student while
# a method crafts its training examples. ``official``: each method's declared ``official_attack_mode``.
PROTOCOL_ATTACK_MODES = ("official", "eval", "train")
FREE = "free"  # the "free" family: the examples come from the training pass itself (train mode, no switch)

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
    # a run with a teacher group (multi-teacher methods): the frozen teachers by role, and the
    # logits on the clean batch of the roles the methods read (``Method.clean_logits_roles``)
    teachers: dict[str, nn.Module] | None = None
    teachers_logits: dict[str, torch.Tensor] | None = None
    epoch: int = 0
    epochs: int = 1


class Method(ABC):
    """Every hook a method may use; only ``loss`` must be written."""

    Params: type[MethodParams] = MethodParams
    uses_teacher: bool = False  # needs a teacher; the trainer fills Batch.teacher_logits (see below)
    uses_teacher_features: bool = False  # ... and Batch.teacher_features
    # a multi-teacher method: the roles of the teacher group it distills from, e.g. ("clean", "robust");
    # the suite pairs it with groups of exactly these roles (``teachers: [{name, group: {role: teacher}}]``)
    teacher_roles: tuple[str, ...] = ()
    replays: int = 1  # the "free" family replays each batch m times (epochs are divided by m)
    holdout: int = 0  # training examples the trainer withholds from training and hands to end_epoch
    # the loss differentiates through a gradient of the student (double backward, e.g. an input-gradient
    # penalty): under ``training.compile`` the student then runs eagerly (AOTAutograd has no double backward)
    double_backward: bool = False
    # The student's BatchNorm mode while the method crafts training examples in its official code:
    # "train" or "eval" (with ``official_attack_mode_source``, the file and line that show it), FREE for
    # the "free" family (crafting is the training pass itself: exempt from the protocol), None: crafts none.
    official_attack_mode: ClassVar[str | None] = None
    official_attack_mode_source: ClassVar[str] = ""

    @property
    def needs_teacher_logits(self) -> bool:
        """Whether the loss reads ``Batch.teacher_logits``: only then does the trainer run the teacher
        on the clean batch (a method that queries the teacher itself, on other inputs, says False)."""
        return self.uses_teacher

    @property
    def clean_logits_roles(self) -> tuple[str, ...]:
        """A multi-teacher method: the roles whose logits on the clean batch the loss reads
        (``Batch.teachers_logits``), computed once per batch by the trainer; default: every role."""
        return self.teacher_roles

    def __init__(self, params: MethodParams, threat: ThreatModel, seed: int = 0):
        self.params = params
        self.threat = threat
        # one random stream per run for training-time attacks (random starts differ across batches)
        self.generator = torch.Generator().manual_seed(10_000 + seed)
        # the mode this instance crafts in ("train", "eval", FREE or None); build_method sets the protocol's
        self.attack_mode = resolve_attack_mode(type(self), "official")

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


def resolve_attack_mode(cls: type[Method], protocol: str) -> str | None:
    """The BatchNorm mode ``cls`` crafts its training examples in under the protocol's ``attack_mode``
    (official | eval | train): "train" or "eval"; FREE for the exempt free family; None: crafts none."""
    if protocol not in PROTOCOL_ATTACK_MODES:
        raise ValueError(f"attack_mode must be one of {', '.join(PROTOCOL_ATTACK_MODES)}, not {protocol!r}")
    official = cls.official_attack_mode
    if official is None or official == FREE or protocol == "official":
        return official
    return protocol


def build_method(name: str, params: dict | None, threat: ThreatModel, seed: int = 0,
                 attack_mode: str = "official") -> Method:
    """The registered method ``name`` with its params; ``attack_mode`` is the protocol's (official | eval |
    train), the BatchNorm mode while the method crafts its training examples."""
    cls = METHODS.get(name)
    method = cls(cls.Params(**(params or {})), threat, seed)
    method.attack_mode = resolve_attack_mode(cls, attack_mode)
    return method


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Run a block with the model in train or eval mode, then restore the mode it had."""
    was_training = model.training
    model.train(train)
    try:
        yield model
    finally:
        model.train(was_training)
