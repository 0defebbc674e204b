"""Small models sized for 8x8 digits (and quick tests): a CNN teacher, a tiny CNN and an MLP student."""
from __future__ import annotations

import torch
from torch import nn

from .base import MODELS, Classifier


class SmallCNN(Classifier):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 32):
        super().__init__(feature_dim=4 * width, num_classes=num_classes)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, 4 * width), nn.ReLU(),
        )

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyCNN(Classifier):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 16):
        super().__init__(feature_dim=2 * width, num_classes=num_classes)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MLP(Classifier):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, hidden: int = 128):
        super().__init__(feature_dim=hidden, num_classes=num_classes)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@MODELS.register("cnn_small", description="3-conv CNN with BatchNorm (digits teacher size, ~60k params)",
                 options={"width": "channels of the first convolutions (the last has 2 x width)"})
def cnn_small(num_classes: int, in_channels: int, image_size: int, width: int = 32) -> Classifier:
    return SmallCNN(num_classes, in_channels, image_size, width)


@MODELS.register("cnn_tiny", description="2-conv CNN with BatchNorm (digits student, ~5k params)",
                 options={"width": "channels of the first convolution (the second has 2 x width)"})
def cnn_tiny(num_classes: int, in_channels: int, image_size: int, width: int = 16) -> Classifier:
    return TinyCNN(num_classes, in_channels, image_size, width)


@MODELS.register("mlp", description="2-hidden-layer MLP (digits student)",
                 options={"hidden": "units of each hidden layer"})
def mlp(num_classes: int, in_channels: int, image_size: int, hidden: int = 128) -> Classifier:
    return MLP(num_classes, in_channels, image_size, hidden)
