"""What a dataset source returns: whole splits as tensors, pixels in [0, 1], channels first."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..registry import Registry

# fields of every source, part of a run's identity only when a validation split is asked for
VALIDATION_FIELDS = ("validation", "validation_seed")


class DatasetParams(BaseModel):
    """Options of a dataset source; each source subclasses this (unknown keys are errors).

    ``validation`` (every source): a count (``1000``) or a fraction (``0.1``) of the training split
    held out as a validation split, stratified by class and drawn with ``validation_seed``. The
    validation examples are never trained on; checkpoint selection and tuning read them, never
    the test split."""

    model_config = ConfigDict(extra="forbid")

    validation: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None, description="training examples held out for selection: a count (1000) or a fraction (0.1)")
    validation_seed: int = Field(0, description="the seed of the stratified validation draw")

    def for_identity(self) -> dict:
        """The options as a run's identity holds them: the validation fields only when a split is
        asked for (so run ids of suites without one do not change)."""
        options = self.model_dump(mode="json")
        if self.validation is None:
            for name in VALIDATION_FIELDS:
                options.pop(name, None)
        return options


@dataclass
class TensorDataset:
    name: str
    x_train: torch.Tensor  # float32, [N, C, H, W], in [0, 1]
    y_train: torch.Tensor  # int64, [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: str = "none"  # "none" or "crop_flip" (applied on whole batches by data.augment)
    # the validation split (dataset.validation), carved from the source's training split
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    validation_indices: torch.Tensor | None = None  # int64: positions in the source's training split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


class DatasetSource(ABC):
    """A registered dataset: ``Params`` validates the suite's options, ``load`` returns tensors."""

    Params: type[DatasetParams] = DatasetParams

    @abstractmethod
    def load(self, params: DatasetParams) -> TensorDataset:
        """The whole splits as tensors."""


DATASETS: Registry[type[DatasetSource]] = Registry("dataset", base=DatasetSource)


def uint8_to_float(x) -> torch.Tensor:
    return torch.as_tensor(x).float().div_(255.0)


def carve_validation(data: TensorDataset, params: DatasetParams) -> TensorDataset:
    """``data`` with ``params.validation`` training examples moved to ``x_val``/``y_val``: a
    stratified draw (scikit-learn's ``train_test_split``, ``random_state=validation_seed``) over
    the positions of the source's training split. Both parts keep the source's order. The test
    split is not touched. Unchanged when no validation split is asked for."""
    if params.validation is None:
        return data
    from sklearn.model_selection import train_test_split

    n = data.y_train.shape[0]
    labels = data.y_train.numpy()
    try:
        train_part, val_part = train_test_split(np.arange(n), test_size=params.validation, stratify=labels,
                                                random_state=params.validation_seed)
    except ValueError as exc:  # too few examples per class, or a split larger than the data
        raise ConfigError(f"dataset.validation: {params.validation!r} cannot be drawn stratified from "
                          f"{n} training examples of {data.num_classes} classes ({exc})") from None
    train_index = torch.from_numpy(np.sort(train_part))
    val_index = torch.from_numpy(np.sort(val_part))
    data.x_val, data.y_val = data.x_train[val_index], data.y_train[val_index]
    data.x_train, data.y_train = data.x_train[train_index], data.y_train[train_index]
    data.validation_indices = val_index
    return data
