"""Distiller's CIFAR-10 ResNets (He et al. 2016, option B shortcuts), keeping Distiller's module names."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS


class EltwiseAdd(nn.Module):
    """Element-wise sum as a module, so the residual addition has a name in the graph."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a + b``."""
        return a + b


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the (possibly downsampled) input, then relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        # Not in place: exits and thinning may read a block's intermediate outputs.
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.downsample = downsample
        self.stride = stride
        self.residual_eltwiseadd = EltwiseAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(self.residual_eltwiseadd(residual, out))


class ResNetCifar(nn.Module):
    """Three stages of BasicBlocks (16, 32, 64 channels) on 32x32 images."""

    def __init__(self, layers: List[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], stride=2)
        self.layer3 = self._make_layer(64, layers[2], stride=2)
        # Adaptive pooling equals Distiller's AvgPool2d(8) on 32x32 inputs and accepts other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64 * BasicBlock.expansion, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _register(name: str, blocks: int, doc: str) -> None:
    def factory(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        require_no_pretrained(name, pretrained)
        return ResNetCifar([blocks] * 3, num_classes, in_channels)

    factory.__name__ = name
    factory.__doc__ = doc
    MODELS.add(name, factory)


for _name, _blocks in (
    ("resnet20_cifar", 3),
    ("resnet32_cifar", 5),
    ("resnet44_cifar", 7),
    ("resnet56_cifar", 9),
    ("resnet110_cifar", 18),
):
    _register(_name, _blocks, f"ResNet-{6 * _blocks + 2} for CIFAR ({_blocks} BasicBlocks per stage).")
    # Distiller's *_cifar_earlyexit names: the same network; its exit (after layer1.2) comes from the
    # --earlyexit_* flags, as Distiller's models take their thresholds and loss weights from them
    _register(f"{_name}_earlyexit", _blocks, f"ResNet-{6 * _blocks + 2} for CIFAR with Distiller's early exit "
                                             f"after layer1.2 (thresholds and weights from --earlyexit_* flags).")
