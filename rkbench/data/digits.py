"""scikit-learn's bundled 8x8 handwritten digits: real data that needs no network."""
from __future__ import annotations

import torch
from pydantic import Field

from .base import DATASETS, DatasetParams, DatasetSource, TensorDataset


class DigitsParams(DatasetParams):
    test_fraction: float = Field(0.25, description="share of the 1797 digits held out as the test split")
    split_seed: int = Field(0, description="seed of the stratified train/test split (fixed, so that results "
                                           "are comparable across suites)")


@DATASETS.register("digits", description="scikit-learn's 1797 real 8x8 digits, 1x8x8 in [0,1], stratified split",
                   source="sklearn.datasets.load_digits")
class Digits(DatasetSource):
    Params = DigitsParams

    def load(self, params: DigitsParams) -> TensorDataset:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = bunch.images.astype("float32") / 16.0  # pixel values are 0..16
        x_train, x_test, y_train, y_test = train_test_split(
            images, bunch.target, test_size=params.test_fraction, stratify=bunch.target,
            random_state=params.split_seed)
        as_x = lambda a: torch.from_numpy(a).unsqueeze(1).contiguous()  # noqa: E731
        as_y = lambda a: torch.from_numpy(a).long()  # noqa: E731
        return TensorDataset("digits", as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test), num_classes=10)
