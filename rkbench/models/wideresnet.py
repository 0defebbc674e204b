"""WideResNet-depth-width (Zagoruyko & Komodakis 2016), the RobustBench/TRADES layout.

Layer by layer the WRN-34-10 of TRADES (yaodongyu/TRADES ``models/wideresnet.py``; ARD, RSLAD and
IAD copy it): pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3), the shortcut a 1x1 conv of
the activated input where the width changes, final BN-ReLU, global average pooling, a linear head;
and its initialization: convs N(0, 2 / (k*k*out_channels)), BatchNorm weight 1 and bias 0, the
head's bias 0. One difference: the official class also builds ``sub_block1``, a copy of the first
stage that ``forward`` never calls (2,102,112 parameters at width 10); rkbench leaves it out, so
WRN-34-10 has 46,160,474 parameters here against 48,262,586 there, with the same function.
"""
from __future__ import annotations

import math

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
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@MODELS.register("wideresnet", description="WideResNet(depth, width), e.g. depth 34 width 10 (WRN-34-10)",
                 source="Zagoruyko & Komodakis 2016",
                 options={"depth": "layers: 6n + 4 (28, 34, 70)", "width": "widening factor of the channels"})
def wideresnet(num_classes: int, in_channels: int, image_size: int, depth: int = 28, width: int = 10) -> Classifier:
    return WideResNet(depth, width, num_classes, in_channels)
