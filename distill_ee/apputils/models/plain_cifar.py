"""Distiller's plain (shortcut-free) CIFAR-10 networks of He et al. 2016, following Distiller's definition.

Module and parameter names are Distiller's (``layer1.0.conv1``, ``layer3.2.bn2``, ``fc``), so its plain20
schedules apply unchanged.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _norm(planes: int, batch_norm: bool) -> Optional[nn.BatchNorm2d]:
    """A batch norm over ``planes`` channels, or None without batch normalization."""
    return nn.BatchNorm2d(planes) if batch_norm else None


class PlainBlock(nn.Module):
    """conv-bn-relu-conv-bn-relu without a shortcut (bn left out when ``batch_norm`` is False)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = _norm(planes, batch_norm)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = _norm(planes, batch_norm)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output."""
        out = self.conv1(x)
        if self.bn1 is not None:
            out = self.bn1(out)
        out = self.conv2(self.relu1(out))
        if self.bn2 is not None:
            out = self.bn2(out)
        return self.relu2(out)


class PlainCifar(nn.Module):
    """A stem conv and three stages of PlainBlocks (16, 32, 64 channels) on 32x32 images."""

    def __init__(self, blocks: List[int], num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = _norm(self.inplanes, batch_norm)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(16, blocks[0], 1, batch_norm)
        self.layer2 = self._make_layer(32, blocks[1], 2, batch_norm)
        self.layer3 = self._make_layer(64, blocks[2], 2, batch_norm)
        # Adaptive pooling equals Distiller's AvgPool2d(8) on 32x32 inputs and accepts other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * PlainBlock.expansion, num_classes)
        init_convs_and_norms(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, batch_norm: bool) -> nn.Sequential:
        layers = [PlainBlock(self.inplanes, planes, stride, batch_norm)]
        self.inplanes = planes * PlainBlock.expansion
        layers += [PlainBlock(self.inplanes, planes, 1, batch_norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        x = self.layer3(self.layer2(self.layer1(self.relu(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def init_convs_and_norms(model: nn.Module) -> None:
    """Distiller's initialisation: convs N(0, 2 / (k*k*out_channels)), batch norms 1 and 0, linears default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _register(name: str, blocks: int, batch_norm: bool) -> None:
    def factory(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        require_no_pretrained(name, pretrained)
        return PlainCifar([blocks] * 3, num_classes, in_channels, batch_norm)

    factory.__name__ = name
    factory.__doc__ = (f"Plain-{6 * blocks + 2} for CIFAR ({blocks} blocks per stage, no shortcuts"
                       f"{'' if batch_norm else ', no batch normalization'}).")
    MODELS.add(name, factory)


_register("plain20_cifar", 3, True)
_register("plain20_cifar_nobn", 3, False)
