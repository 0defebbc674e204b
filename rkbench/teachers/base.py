"""Teacher sources: where a robust teacher comes from (trained in the suite, a checkpoint, ...).

A source validates its suite options (``Params``) and builds the teacher network. Anything that
needs the shared trainer gets it through ``TeacherContext.train``, so sources never import the
trainer or the runner.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..data import TensorDataset
from ..registry import Registry
from ..threat import ThreatModel


class TeacherParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class TeacherContext:
    dataset: TensorDataset
    threat: ThreatModel
    device: torch.device
    training: Any = None  # the suite's TrainingConfig (defaults for teachers trained in the suite)
    work_dir: Path | None = None  # where a trained teacher keeps its checkpoints
    # train(model, method_name, method_params, seed, work_dir) -> trained model (with ``training`` above)
    train: Callable[..., nn.Module] | None = None


class TeacherSource(ABC):
    Params: type[TeacherParams] = TeacherParams
    trains: bool = False  # True: the runner trains it once and caches it under results/<suite>/teachers/
    # an option that defaults to the teacher's name in the suite (``{name: Carmon2019Unlabeled,
    # source: robustbench}`` names the zoo model by the teacher's name)
    name_option: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.trains and cls.restore is TeacherSource.restore:  # caught when the class is written, not after training
            raise TypeError(f"teacher source {cls.__name__} trains its teachers (trains = True) but has no restore "
                            f"hook: the teacher cache rebuilds a trained teacher from its saved weights through it")

    def describe(self, params: TeacherParams) -> str:
        """How progress messages name the teacher being built (its model, by default)."""
        return self.model_label(params) or type(self).__name__

    def model_label(self, params: TeacherParams) -> str | None:
        """What the teachers table shows in its ``model`` column."""
        for key in ("model", "model_name", "arch"):
            value = getattr(params, key, None)
            if isinstance(value, str) and value:
                return value
        return None

    def model_spec(self, params: TeacherParams) -> tuple[str, dict] | None:
        """The registered architecture (and its options) of the network ``build`` returns, written
        into the model config beside a trained teacher's ``model.safetensors``; None when unknown."""
        model = getattr(params, "model", None)
        if isinstance(model, str) and model:
            return model, dict(getattr(params, "model_options", None) or {})
        return None

    def identity(self, params: TeacherParams) -> dict:
        """What makes two teachers the same (hashed into every run that uses the teacher)."""
        return params.model_dump(mode="json")

    @abstractmethod
    def build(self, params: TeacherParams, context: TeacherContext) -> nn.Module:
        """The teacher network (pixels in [0, 1] -> logits; ``features`` where it can)."""

    def restore(self, params: TeacherParams, context: TeacherContext, weights: Path) -> nn.Module:
        """A teacher this source trained (``trains``), rebuilt from the weights the teacher cache
        saved after ``build``. Sources that do not train are never restored: their weights live in
        their own cache, and ``build`` reads them from there."""
        raise NotImplementedError(f"{type(self).__name__} does not train its teachers: nothing to restore")


TEACHER_SOURCES: Registry[type[TeacherSource]] = Registry("teacher source", base=TeacherSource)
