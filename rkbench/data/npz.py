"""A local ``.npz`` file with x_train, y_train, x_test, y_test (uint8, NCHW), e.g. a CIFAR-10 slice."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

import numpy as np
import torch

from ..errors import DataUnavailableError
from .base import DATASETS, DatasetParams, DatasetSource, TensorDataset, uint8_to_float

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


class NpzParams(DatasetParams):
    path: Path = Field(description="the .npz file of uint8 NCHW x_train, y_train, x_test, y_test")
    num_classes: int | None = Field(None, description="default: 1 + the largest label")
    augment: Literal["none", "crop_flip"] = Field("crop_flip", description="training augmentation: random "
                                                                      "crop (padding 4) and horizontal flip, or none")
    n_train: int | None = Field(None, ge=1, description="keep the first N training images (quick suites)")


@DATASETS.register("npz", description="a local .npz of uint8 NCHW images (x_train, y_train, x_test, y_test)",
                   source="numpy")
class Npz(DatasetSource):
    Params = NpzParams

    def load(self, params: NpzParams) -> TensorDataset:
        path = params.path.expanduser()
        if not path.is_file():
            raise DataUnavailableError(f"dataset file not found: {path}")
        try:
            arrays = np.load(path, allow_pickle=False)
        except Exception as exc:  # zip/pickle errors: name the file, not the internals
            raise DataUnavailableError(f"{path} is not a readable .npz file ({exc.__class__.__name__})") from exc
        missing = [k for k in REQUIRED if k not in arrays]
        if missing:
            raise DataUnavailableError(f"{path} lacks array(s) {', '.join(missing)}; it needs {', '.join(REQUIRED)}")
        for key in ("x_train", "x_test"):
            if arrays[key].dtype != np.uint8 or arrays[key].ndim != 4:
                raise DataUnavailableError(f"{path}: {key} must be uint8 of shape [N, C, H, W], "
                                           f"got {arrays[key].dtype} {arrays[key].shape}")
        x_train = arrays["x_train"][:params.n_train]
        y_train = torch.from_numpy(arrays["y_train"][:params.n_train].astype(np.int64))
        y_test = torch.from_numpy(arrays["y_test"].astype(np.int64))
        num_classes = params.num_classes or int(max(y_train.max(), y_test.max())) + 1
        return TensorDataset(path.stem, uint8_to_float(x_train), y_train, uint8_to_float(arrays["x_test"]),
                             y_test, num_classes=num_classes, augment=params.augment)
