"""Distiller's MobileNet v1 (Howard et al. 2017) at four widths, keeping Distiller's module names.

``model.0`` is the stem (conv, bn, relu); ``model.1`` .. ``model.13`` are the depthwise-separable blocks
(``model.K.0`` the depthwise conv, ``model.K.3`` the pointwise one); ``model.14`` pools and ``fc`` classifies,
so Distiller's mobilenet schedules apply unchanged.
"""
from __future__ import annotations

from math import floor
from typing import List

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS

BASE_CHANNELS = [32, 64, 128, 256, 512, 1024]

#: (input width index, output width index, stride) of the thirteen depthwise-separable blocks
BLOCKS = [(0, 1, 1), (1, 2, 2), (2, 2, 1), (2, 3, 2), (3, 3, 1), (3, 4, 2),
          (4, 4, 1), (4, 4, 1), (4, 4, 1), (4, 4, 1), (4, 4, 1), (4, 5, 2), (5, 5, 1)]


def conv_bn_relu(n_ifm: int, n_ofm: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> List[nn.Module]:
    """A bias-free convolution, its batch norm and a ReLU."""
    return [
        nn.Conv2d(n_ifm, n_ofm, kernel_size, stride=stride, padding=padding, groups=groups, bias=False),
        nn.BatchNorm2d(n_ofm),
        nn.ReLU(inplace=False),
    ]


def depthwise_separable(n_ifm: int, n_ofm: int, stride: int) -> nn.Sequential:
    """A 3x3 depthwise conv-bn-relu then a 1x1 pointwise conv-bn-relu."""
    return nn.Sequential(*conv_bn_relu(n_ifm, n_ifm, 3, stride=stride, padding=1, groups=n_ifm),
                         *conv_bn_relu(n_ifm, n_ofm, 1))


def widths(channel_multiplier: float, min_channels: int = 8) -> List[int]:
    """Distiller's channel counts at a width multiplier: each base width scaled, rounded down, at least 8."""
    return [max(floor(n * channel_multiplier), min_channels) for n in BASE_CHANNELS]


class MobileNet(nn.Module):
    """A strided 3x3 stem, thirteen depthwise-separable blocks, global pooling and one Linear layer."""

    def __init__(self, channel_multiplier: float = 1.0, min_channels: int = 8, num_classes: int = 1000,
                 in_channels: int = 3):
        super().__init__()
        if channel_multiplier <= 0:
            raise ValueError("channel_multiplier must be > 0")
        self.channels = widths(channel_multiplier, min_channels)
        c = self.channels
        self.model = nn.Sequential(
            nn.Sequential(*conv_bn_relu(in_channels, c[0], 3, stride=2, padding=1)),
            *(depthwise_separable(c[i], c[o], s) for i, o, s in BLOCKS),
            # Adaptive pooling equals Distiller's AvgPool2d(7) on 224x224 inputs and accepts other sizes.
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(c[5], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.fc(torch.flatten(self.model(x), 1))


def _register(name: str, channel_multiplier: float) -> None:
    def factory(num_classes: int = 1000, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        require_no_pretrained(name, pretrained)
        return MobileNet(channel_multiplier, num_classes=num_classes, in_channels=in_channels)

    factory.__name__ = name
    factory.__doc__ = f"MobileNet v1 at width {channel_multiplier:g} for ImageNet-sized images."
    MODELS.add(name, factory)


for _name, _multiplier in (("mobilenet", 1.0), ("mobilenet_025", 0.25), ("mobilenet_050", 0.5),
                           ("mobilenet_075", 0.75)):
    _register(_name, _multiplier)
