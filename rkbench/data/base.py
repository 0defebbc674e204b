"""What a dataset source returns: whole splits as tensors, pixels in [0, 1], channels first."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict

from ..registry import Registry


class DatasetParams(BaseModel):
    """Options of a dataset source; each source subclasses this (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class TensorDataset:
    name: str
    x_train: torch.Tensor  # float32, [N, C, H, W], in [0, 1]
    y_train: torch.Tensor  # int64, [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: str = "none"  # "none" or "crop_flip" (applied on whole batches by data.augment)

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
