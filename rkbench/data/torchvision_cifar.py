"""CIFAR-10 / CIFAR-100 through torchvision; downloads only when the suite allows it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from ..errors import DataUnavailableError
from .base import DATASETS, DatasetParams, DatasetSource, TensorDataset, uint8_to_float


class CifarParams(DatasetParams):
    root: Path = Field(Path("~/.cache/rkbench/data"), description="folder holding torchvision's cifar-10-batches-py / cifar-100-python")
    download: bool = Field(False, description="let torchvision download missing files (off: an offline "
                                              "machine gets one clear error, not a hang)")


class _Cifar(DatasetSource):
    Params = CifarParams
    dataset_name = ""
    num_classes = 0

    def load(self, params: CifarParams) -> TensorDataset:
        import torchvision

        cls = getattr(torchvision.datasets, self.dataset_name.upper())
        root = params.root.expanduser()
        try:
            train = cls(str(root), train=True, download=params.download)
            test = cls(str(root), train=False, download=params.download)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            hint = "" if params.download else " (set dataset.download=true to fetch it)"
            raise DataUnavailableError(f"{self.dataset_name} not found under {root}{hint}: {exc}") from exc
        except OSError as exc:  # download attempted without network
            raise DataUnavailableError(f"could not download {self.dataset_name} to {root}: {exc}") from exc

        def tensors(split):
            x = uint8_to_float(np.ascontiguousarray(split.data.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
            return x, torch.as_tensor(np.asarray(split.targets), dtype=torch.int64)

        x_train, y_train = tensors(train)
        x_test, y_test = tensors(test)
        return TensorDataset(self.dataset_name, x_train, y_train, x_test, y_test, self.num_classes, augment="crop_flip")


@DATASETS.register("cifar10", description="CIFAR-10 via torchvision (root, download)", source="torchvision")
class Cifar10(_Cifar):
    dataset_name = "cifar10"
    num_classes = 10


@DATASETS.register("cifar100", description="CIFAR-100 via torchvision (root, download)", source="torchvision")
class Cifar100(_Cifar):
    dataset_name = "cifar100"
    num_classes = 100
