"""Tiny ImageNet (200 classes, 64x64 RGB) in its standard ``tiny-imagenet-200`` layout:
``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
``val/val_annotations.txt`` (file, wnid, box; tab-separated). The labelled val split is the test
split (the test images have no labels). Class ``i`` is the i-th wnid in sorted order, the order of
torchvision's ImageFolder over ``train/``. Decoded once and cached as uint8 like ``imagefolder``
(``size`` other than 64 resizes). Never downloads: unpack tiny-imagenet-200.zip and set ``root``.

```yaml
dataset: {name: tinyimagenet, root: ~/data/tiny-imagenet-200}
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
from .images import cached_arrays, decode, fingerprint, labelled_files


class TinyImageNetParams(DatasetParams):
    root: Path = Field(Path("~/.cache/rkbench/data/tiny-imagenet-200"), description="the unpacked tiny-imagenet-200 folder")
    size: int = Field(64, ge=1, description="images become size x size (64: as stored)")
    augment: Literal["none", "crop_flip"] = Field("crop_flip", description="training augmentation: random "
                                                                      "crop (padding 4) and horizontal flip, or none")
    cache_dir: Path = Field(Path("~/.cache/rkbench/imagefolder"), description="where the decoded uint8 arrays are cached")


def required(path: Path) -> Path:
    if not path.exists():
        raise DataUnavailableError(f"Tiny ImageNet file not found: {path} (expected the tiny-imagenet-200 layout: "
                                   f"wnids.txt, train/<wnid>/images/, val/images/, val/val_annotations.txt)")
    return path


def read_wnids(root: Path) -> list[str]:
    wnids = sorted({line.strip() for line in required(root / "wnids.txt").read_text().splitlines() if line.strip()})
    if not wnids:
        raise DataUnavailableError(f"{root / 'wnids.txt'} lists no classes")
    return wnids


def train_files(root: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = labelled_files(required(root / "train"), wnids)  # train/<wnid>/images/*.JPEG
    found = set(labels)
    for index, wnid in enumerate(wnids):
        if index not in found:
            required(root / "train" / wnid / "images")
            raise DataUnavailableError(f"no images in {root / 'train' / wnid / 'images'}")
    return files, labels


def val_files(root: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    annotations = required(root / "val" / "val_annotations.txt")
    images = required(root / "val" / "images")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataUnavailableError(f"{annotations}:{number}: expected '<file>\\t<wnid>\\t...' with a wnid of "
                                       f"wnids.txt, got {line.strip()[:80]!r}")
        files.append(required(images / fields[0]))
        labels.append(index[fields[1]])
    return files, labels


@DATASETS.register("tinyimagenet", description="Tiny ImageNet, 200 classes of 3x64x64, the tiny-imagenet-200 "
                   "layout under root (val labelled by val_annotations.txt); offline, cached as uint8",
                   source="PIL")
class TinyImageNet(DatasetSource):
    Params = TinyImageNetParams

    def load(self, params: TinyImageNetParams) -> TensorDataset:
        root = required(params.root.expanduser())
        wnids = read_wnids(root)
        x_files, y_train = train_files(root, wnids)
        v_files, y_test = val_files(root, wnids)

        def build() -> dict[str, np.ndarray]:
            return {"x_train": decode(x_files, params.size, "resize", "RGB"), "y_train": np.asarray(y_train),
                    "x_test": decode(v_files, params.size, "resize", "RGB"), "y_test": np.asarray(y_test)}

        key = fingerprint(x_files + v_files, {"source": "tinyimagenet", "size": params.size, "wnids": wnids})
        arrays = cached_arrays(params.cache_dir, f"tinyimagenet-{params.size}", key, build)
        return TensorDataset("tinyimagenet", uint8_to_float(arrays["x_train"]),
                             torch.tensor(arrays["y_train"], dtype=torch.int64), uint8_to_float(arrays["x_test"]),
                             torch.tensor(arrays["y_test"], dtype=torch.int64), num_classes=len(wnids),
                             augment=params.augment)
