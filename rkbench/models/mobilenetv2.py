"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs, in the CIFAR form the robust-distillation
papers train.

``mobilenetv2`` is the student of ARD, RSLAD, IAD and AdaAD: the CIFAR variant of the official ARD
repository (goldblum/AdversariallyRobustDistillation, ``models/mobilenetv2.py``), layer by layer:

- stem: 3x3 conv, stride 1, 32 channels, BatchNorm, ReLU;
- 17 inverted-residual blocks from ``CIFAR_CONFIG`` (the second stage keeps stride 1 at 32x32):
  1x1 expansion conv + BN + ReLU, 3x3 depthwise conv (the block's stride) + BN + ReLU, 1x1
  projection conv + BN (no activation);
- every stride-1 block adds a shortcut: the identity when the channel count is unchanged, a 1x1
  conv + BN when it changes (blocks 0, 1, 10 and 16: 32->16, 16->24, 64->96, 160->320); stride-2
  blocks have none;
- 1x1 conv to 1280 channels + BN + ReLU, global average pooling (the code's 4x4 average pool of
  the 4x4 map), a linear head. ReLU everywhere, not ReLU6; PyTorch's default initialization.
  2,296,922 parameters with 10 classes, 2,412,212 with 100.

State-dict keys are the official ones, except that the official ``linear`` is rkbench's ``head``.

``mobilenetv2_relu6`` is the variant rkbench had before (ReLU6, no shortcut where the channel
count changes; 2,237,770 parameters with 10 classes), kept for the measurements made with it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, Classifier

# (expansion, out_planes, num_blocks, stride); the second stage keeps stride 1 for 32x32 inputs
CIFAR_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int, activation: type[nn.Module],
                 channel_shortcut: bool):
        super().__init__()
        planes = expansion * in_planes
        self.act = activation()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.residual = stride == 1 and (in_planes == out_planes or channel_shortcut)
        self.shortcut = nn.Sequential()  # the identity
        if self.residual and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.residual else out


class MobileNetV2(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0, last_channels: int = 1280,
                 activation: type[nn.Module] = nn.ReLU, channel_shortcut: bool = True):
        super().__init__(feature_dim=last_channels, num_classes=num_classes)
        stem = int(32 * width_mult)
        self.act = activation()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, in_planes = [], stem
        for expansion, out_planes, blocks, stride in CIFAR_CONFIG:
            out_planes = int(out_planes * width_mult)
            for block_stride in [stride] + [1] * (blocks - 1):
                layers.append(InvertedResidual(in_planes, out_planes, expansion, block_stride, activation,
                                               channel_shortcut))
                in_planes = out_planes
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(in_planes, last_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last_channels)

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.act(self.bn1(self.conv1(x))))
        out = self.act(self.bn2(self.conv2(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


MOBILENET_OPTIONS = {"width_mult": "channel multiplier of every layer",
                     "last_channels": "channels of the last 1x1 convolution (the penultimate features)"}


@MODELS.register("mobilenetv2", description="MobileNetV2, the CIFAR variant of ARD/RSLAD/IAD/AdaAD (ReLU, "
                 "1x1 shortcuts; 2.30M params)", source="Sandler et al. 2018; goldblum/AdversariallyRobustDistillation "
                 "models/mobilenetv2.py", options=MOBILENET_OPTIONS)
def mobilenetv2(num_classes: int, in_channels: int, image_size: int, width_mult: float = 1.0,
                last_channels: int = 1280) -> Classifier:
    return MobileNetV2(num_classes, in_channels, width_mult, last_channels)


@MODELS.register("mobilenetv2_relu6", description="MobileNetV2, CIFAR variant with ReLU6 and no channel-changing "
                 "shortcuts (2.24M params)", source="Sandler et al. 2018",
                 options=MOBILENET_OPTIONS)
def mobilenetv2_relu6(num_classes: int, in_channels: int, image_size: int, width_mult: float = 1.0,
                      last_channels: int = 1280) -> Classifier:
    return MobileNetV2(num_classes, in_channels, width_mult, last_channels, activation=nn.ReLU6,
                       channel_shortcut=False)
