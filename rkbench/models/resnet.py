"""CIFAR ResNet-18 (He et al.) and PreActResNet-18 (He et al., identity mappings), 3x3 stem, stride 1."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, Classifier

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(Classifier):
    def __init__(self, block, num_blocks, num_classes: int, in_channels: int = 3, base_width: int = 64,
                 preact: bool = False, normalize: bool = False):
        mean_std = (CIFAR10_MEAN, CIFAR10_STD) if normalize else (None, None)
        super().__init__(feature_dim=8 * base_width, num_classes=num_classes, mean=mean_std[0], std=mean_std[1])
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8 * base_width if preact else base_width)
        in_planes = base_width
        layers = []
        for index, blocks in enumerate(num_blocks):
            planes = base_width * 2 ** index
            for stride in [1 if index == 0 else 2] + [1] * (blocks - 1):
                layers.append(block(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.bn1(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


RESNET_OPTIONS = {"base_width": "channels of the first stage (64: the standard ResNet-18; each stage doubles them)",
                  "normalize": "standardize pixels with the CIFAR-10 mean/std inside the model (inputs stay in [0, 1])"}


@MODELS.register("resnet18", description="CIFAR ResNet-18 (3x3 stem, 11M params)", source="He et al. 2016",
                 options=RESNET_OPTIONS)
def resnet18(num_classes: int, in_channels: int, image_size: int, base_width: int = 64,
             normalize: bool = False) -> Classifier:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, base_width, normalize=normalize)


@MODELS.register("preact_resnet18", description="CIFAR PreActResNet-18", source="He et al. 2016 (identity mappings)",
                 options=RESNET_OPTIONS)
def preact_resnet18(num_classes: int, in_channels: int, image_size: int, base_width: int = 64,
                    normalize: bool = False) -> Classifier:
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, in_channels, base_width, preact=True, normalize=normalize)
