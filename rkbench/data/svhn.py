"""SVHN (cropped digits, 3x32x32, 10 classes) from torchvision's files: ``<root>/train_32x32.mat``
and ``<root>/test_32x32.mat`` (``X`` of shape [32, 32, 3, N] uint8, ``y`` of shape [N, 1] with
digit 0 stored as label 10, mapped to 0 as torchvision does). Read with ``scipy.io.loadmat``;
downloaded (through torchvision, md5-checked) only with ``download: true``. ``extra: true`` adds
the 531k ``extra_32x32.mat`` images to the training split.

```yaml
dataset: {name: svhn, root: ~/.cache/rkbench/data/svhn}
```
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import DataUnavailableError
from .base import DATASETS, DatasetParams, DatasetSource, TensorDataset, uint8_to_float


class SvhnParams(DatasetParams):
    root: Path = Field(Path("~/.cache/rkbench/data/svhn"), description="folder of train_32x32.mat and test_32x32.mat")
    download: bool = Field(False, description="let torchvision download missing files (off: an offline "
                                              "machine gets one clear error, not a hang)")
    extra: bool = Field(False, description="add extra_32x32.mat (531k images) to the training split")
    augment: Literal["none", "crop_flip"] = Field("none", description="training augmentation (none by default: "
                                                                 "digits are not flipped)")


def split_file(root: Path, split: str, download: bool) -> Path:
    path = root / f"{split}_32x32.mat"  # torchvision's file names
    if not path.is_file() and download:
        from torchvision.datasets import SVHN
        from torchvision.datasets.utils import download_url

        url, filename, md5 = SVHN.split_list[split]
        try:
            download_url(url, str(root), filename, md5)
        except OSError as exc:
            raise DataUnavailableError(f"could not download SVHN {split} to {path}: {exc}") from exc
    if not path.is_file():
        hint = "" if download else " (set dataset.download=true to fetch it)"
        raise DataUnavailableError(f"SVHN file not found: {path}{hint}")
    return path


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` [N, 3, 32, 32] uint8 and ``y`` [N] int64 in 0..9 from one of SVHN's .mat files."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
        x, y = mat["X"], mat["y"].astype(np.int64).reshape(-1)
    except Exception as exc:  # not a MAT file, v7.3 (HDF5), missing X or y
        raise DataUnavailableError(f"{path} is not an SVHN .mat file with X and y "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise DataUnavailableError(f"{path}: X must be [H, W, 3, N] with N labels in y, got {x.shape} and {y.shape}")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8), y


@DATASETS.register("svhn", description="SVHN cropped digits via torchvision's .mat files (root, download, extra)",
                   source="torchvision / scipy.io")
class Svhn(DatasetSource):
    Params = SvhnParams

    def load(self, params: SvhnParams) -> TensorDataset:
        root = params.root.expanduser()
        splits = ["train", "extra"] if params.extra else ["train"]
        train = [read_split(split_file(root, split, params.download)) for split in splits]
        x_test, y_test = read_split(split_file(root, "test", params.download))
        x_train = np.concatenate([x for x, _ in train]) if len(train) > 1 else train[0][0]
        y_train = np.concatenate([y for _, y in train]) if len(train) > 1 else train[0][1]
        return TensorDataset("svhn", uint8_to_float(x_train), torch.from_numpy(y_train), uint8_to_float(x_test),
                             torch.from_numpy(y_test), num_classes=10, augment=params.augment)
