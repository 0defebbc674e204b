"""MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and first stage kept at full resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, Classifier

# (expansion, out_planes, num_blocks, stride); strides 1 in the stem and second stage for 32x32 inputs
CIFAR_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        planes = expansion * in_planes
        self.use_residual = stride == 1 and in_planes == out_planes
        self.body = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU6(),
            nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False), nn.BatchNorm2d(planes), nn.ReLU6(),
            nn.Conv2d(planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes),
        )

    def forward(self, x):
        out = self.body(x)
        return out + x if self.use_residual else out


class MobileNetV2(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0, last_channels: int = 1280):
        super().__init__(feature_dim=last_channels, num_classes=num_classes)
        stem = int(32 * width_mult)
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        layers, in_planes = [], stem
        for expansion, out_planes, blocks, stride in CIFAR_CONFIG:
            out_planes = int(out_planes * width_mult)
            for block_stride in [stride] + [1] * (blocks - 1):
                layers.append(InvertedResidual(in_planes, out_planes, expansion, block_stride))
                in_planes = out_planes
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Sequential(nn.Conv2d(in_planes, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels),
                                   nn.ReLU6())

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.layers(self.conv1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@MODELS.register("mobilenetv2", description="MobileNetV2, CIFAR variant (stride-1 stem, ~2.3M params)",
                 source="Sandler et al. 2018")
def mobilenetv2(num_classes: int, in_channels: int, image_size: int, width_mult: float = 1.0,
                last_channels: int = 1280) -> Classifier:
    return MobileNetV2(num_classes, in_channels, width_mult, last_channels)
