"""Your own images in torchvision's ImageFolder layout: ``<root>/train/<class>/*.png`` and
``<root>/val/<class>/*.png`` (any PIL format; classes are the train folder's subfolders, sorted).

Every image is brought to ``size`` x ``size`` (``fit: resize`` scales the whole image,
``fit: center_crop`` scales the shorter side and keeps the central square), converted once to
uint8 arrays and cached in ``cache_dir`` under a key of the file list (path, size, mtime) and the
options, so later runs read one file and train from whole tensors on the device.

```yaml
dataset: {name: imagefolder, root: ~/data/flowers, size: 32, fit: center_crop}
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
from .images import Fit, cached_arrays, decode, fingerprint, labelled_files


class ImageFolderParams(DatasetParams):
    root: Path = Field(description="folder holding the train and val folders")
    train: str = Field("train", description="training split folder under root")
    val: str = Field("val", description="test split folder under root")
    size: int = Field(..., ge=1, description="images become size x size")
    fit: Fit = Field("resize", description="resize: scale the whole image; center_crop: scale the shorter "
                                           "side to size and keep the central square")
    mode: Literal["RGB", "L"] = Field("RGB", description="RGB (3 channels) or L (grayscale, 1 channel)")
    augment: Literal["none", "crop_flip"] = Field("crop_flip", description="training augmentation: random "
                                                                      "crop (padding 4) and horizontal flip, or none")
    cache_dir: Path = Field(Path("~/.cache/rkbench/imagefolder"), description="where the decoded uint8 arrays are cached")


def class_folders(split: Path) -> list[str]:
    if not split.is_dir():
        raise DataUnavailableError(f"image folder not found: {split}")
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    if not classes:
        raise DataUnavailableError(f"{split} has no class subfolders (expected {split}/<class>/<image>)")
    return classes


@DATASETS.register("imagefolder", description="your images, <root>/train/<class>/* and <root>/val/<class>/*, "
                   "resized or center-cropped to size, cached as uint8", source="PIL")
class ImageFolder(DatasetSource):
    Params = ImageFolderParams

    def load(self, params: ImageFolderParams) -> TensorDataset:
        root = params.root.expanduser()
        train_dir, val_dir = root / params.train, root / params.val
        classes = class_folders(train_dir)
        val_classes = class_folders(val_dir)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise DataUnavailableError(f"{val_dir} has class folder(s) not in {train_dir}: {', '.join(unknown[:5])}")
        train_files, train_labels = labelled_files(train_dir, classes)
        val_files, val_labels = labelled_files(val_dir, classes)
        options = {"size": params.size, "fit": params.fit, "mode": params.mode, "classes": classes}

        def build() -> dict[str, np.ndarray]:
            return {"x_train": decode(train_files, params.size, params.fit, params.mode),
                    "y_train": np.asarray(train_labels, dtype=np.int64),
                    "x_test": decode(val_files, params.size, params.fit, params.mode),
                    "y_test": np.asarray(val_labels, dtype=np.int64)}

        key = fingerprint(train_files + val_files, options)
        arrays = cached_arrays(params.cache_dir, f"{root.name or 'images'}-{params.size}", key, build)
        return TensorDataset(root.name or "imagefolder", uint8_to_float(arrays["x_train"]),
                             torch.tensor(arrays["y_train"], dtype=torch.int64), uint8_to_float(arrays["x_test"]),
                             torch.tensor(arrays["y_test"], dtype=torch.int64), num_classes=len(classes),
                             augment=params.augment)
