"""Distiller's pre-activation ResNets for ImageNet (He et al. 2016, identity mappings), following its definition.

Module and parameter names are Distiller's (``conv1``, ``bn1``, ``relu1``, ``layer2.0.pre_bn``,
``layer1.0.bn1_2``, ``layer2.0.downsample.0``, ``final_bn``, ``final_relu``, ``fc``). The first block of
``layer1`` does not pre-activate: the stem's bn-relu already did.
"""
from __future__ import annotations

from typing import List, Optional, Type, Union

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.plain_cifar import conv3x3, init_convs_and_norms
from distill_ee.apputils.models.registry import MODELS


class _Preactivated(nn.Module):
    """The optional bn-relu in front of a block, applied to its input."""

    pre_bn: Optional[nn.BatchNorm2d]
    pre_relu: Optional[nn.ReLU]

    def _set_preactivation(self, inplanes: int, preactivate: bool) -> None:
        self.pre_bn = nn.BatchNorm2d(inplanes) if preactivate else None
        self.pre_relu = nn.ReLU(inplace=False) if preactivate else None
        self.preactivate = preactivate

    def _preact(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activated input (the input itself when the block does not pre-activate)."""
        if self.pre_bn is None or self.pre_relu is None:
            return x
        return self.pre_relu(self.pre_bn(x))


class PreactBasicBlock(_Preactivated):
    """[bn-relu], conv3x3-bn-relu-conv3x3, plus the shortcut (downsampled from the pre-activation)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 preactivate: bool = True):
        super().__init__()
        self._set_preactivation(inplanes, preactivate)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1_2 = nn.BatchNorm2d(planes)
        self.relu1_2 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output (no activation after the sum)."""
        preact = self._preact(x)
        out = self.conv2(self.relu1_2(self.bn1_2(self.conv1(preact))))
        residual = x if self.downsample is None else self.downsample(preact)
        return out + residual


class PreactBottleneck(_Preactivated):
    """[bn-relu], conv1x1-bn-relu-conv3x3-bn-relu-conv1x1 (4x the width), plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 preactivate: bool = True):
        super().__init__()
        self._set_preactivation(inplanes, preactivate)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(planes)
        self.relu1_2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2_3 = nn.BatchNorm2d(planes)
        self.relu2_3 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output (no activation after the sum)."""
        preact = self._preact(x)
        out = self.relu1_2(self.bn1_2(self.conv1(preact)))
        out = self.conv3(self.relu2_3(self.bn2_3(self.conv2(out))))
        residual = x if self.downsample is None else self.downsample(preact)
        return out + residual


Block = Union[Type[PreactBasicBlock], Type[PreactBottleneck]]


class PreactResNet(nn.Module):
    """7x7 stem, bn-relu, max pool, four stages (64..512 wide), final bn-relu, pooling and fc."""

    def __init__(self, block: Block, layers: List[int], num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.final_bn = nn.BatchNorm2d(512 * block.expansion)
        self.final_relu = nn.ReLU(inplace=False)
        # Adaptive pooling equals Distiller's AvgPool2d(7) on 224x224 inputs and accepts other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_convs_and_norms(self)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        outplanes = planes * block.expansion
        if stride != 1 or self.inplanes != outplanes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, outplanes, kernel_size=1, stride=stride, bias=False))
        layers: List[nn.Module] = [block(self.inplanes, planes, stride, downsample, stride != 1)]
        self.inplanes = outplanes
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = self.maxpool(self.relu1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(name: str, block: Block, layers: List[int]) -> None:
    def factory(num_classes: int = 1000, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        require_no_pretrained(name, pretrained)
        return PreactResNet(block, layers, num_classes, in_channels)

    factory.__name__ = name
    factory.__doc__ = f"Pre-activation ResNet-{name[len('preact_resnet'):]} for ImageNet-sized images."
    MODELS.add(name, factory)


for _name, _block, _layers in (
    ("preact_resnet18", PreactBasicBlock, [2, 2, 2, 2]),
    ("preact_resnet34", PreactBasicBlock, [3, 4, 6, 3]),
    ("preact_resnet50", PreactBottleneck, [3, 4, 6, 3]),
    ("preact_resnet101", PreactBottleneck, [3, 4, 23, 3]),
    ("preact_resnet152", PreactBottleneck, [3, 8, 36, 3]),
):
    _register(_name, _block, _layers)
