"""WideResNet-depth-width (Zagoruyko & Komodakis 2016), the RobustBench/TRADES layout."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import MODELS, Classifier


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.shortcut = None if in_planes == out_planes else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(Classifier):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3):
        if (depth - 4) % 6:
            raise ConfigError(f"wideresnet depth must be 6n+4 (e.g. 16, 28, 34), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        super().__init__(feature_dim=widths[3], num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for stage, stride in zip(range(1, 4), (1, 2, 2)):
            for index in range(n):
                blocks.append(WideBlock(in_planes, widths[stage], stride if index == 0 else 1))
                in_planes = widths[stage]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@MODELS.register("wideresnet", description="WideResNet(depth, width), e.g. depth 34 width 10 (WRN-34-10)",
                 source="Zagoruyko & Komodakis 2016")
def wideresnet(num_classes: int, in_channels: int, image_size: int, depth: int = 28, width: int = 10) -> Classifier:
    return WideResNet(depth, width, num_classes, in_channels)
