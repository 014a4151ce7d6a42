"""Distiller's pre-activation ResNets for CIFAR-10 (He et al. 2016, identity mappings), following its definition.

Module and parameter names are Distiller's (``layer1.0.pre_bn``, ``layer1.0.pre_relu``, ``layer2.0.conv1``,
``final_bn``, ``final_relu``, ``fc``). A stage that changes shape downsamples its shortcut by 2x2 average
pooling and zero channels (``downsample.0``, ``downsample.1``); the ``_conv_ds`` variants use a strided 1x1
convolution on the pre-activation instead (``downsample``).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.plain_cifar import init_convs_and_norms, conv3x3
from distill_ee.apputils.models.registry import MODELS


class PreactBasicBlock(nn.Module):
    """bn-relu (the pre-activation), conv-bn-relu-conv, plus the (possibly downsampled) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 preact_downsample: bool = True):
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(inplanes)
        self.pre_relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.stride = stride
        self.preact_downsample = preact_downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output (no activation after the sum: the next block pre-activates)."""
        preact = self.pre_relu(self.pre_bn(x))
        out = self.conv2(self.relu(self.bn(self.conv1(preact))))
        if self.downsample is None:
            residual = x
        else:
            residual = self.downsample(preact if self.preact_downsample else x)
        return out + residual


class PreactResNetCifar(nn.Module):
    """A stem conv, three stages of PreactBasicBlocks (16, 32, 64 channels), then bn-relu, pooling and fc."""

    def __init__(self, layers: List[int], num_classes: int = 10, in_channels: int = 3,
                 conv_downsample: bool = False):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(16, layers[0], 1, conv_downsample)
        self.layer2 = self._make_layer(32, layers[1], 2, conv_downsample)
        self.layer3 = self._make_layer(64, layers[2], 2, conv_downsample)
        self.final_bn = nn.BatchNorm2d(64 * PreactBasicBlock.expansion)
        self.final_relu = nn.ReLU(inplace=False)
        # Adaptive pooling equals Distiller's AvgPool2d(8) on 32x32 inputs and accepts other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * PreactBasicBlock.expansion, num_classes)
        init_convs_and_norms(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, conv_downsample: bool) -> nn.Sequential:
        downsample: Optional[nn.Module] = None
        outplanes = planes * PreactBasicBlock.expansion
        if stride != 1 or self.inplanes != outplanes:
            if conv_downsample:
                downsample = nn.Conv2d(self.inplanes, outplanes, kernel_size=1, stride=stride, bias=False)
            else:
                pad = self.inplanes // 2
                downsample = nn.Sequential(nn.AvgPool2d(2), nn.ConstantPad3d((0, 0, 0, 0, pad, pad), 0.0))
        layers = [PreactBasicBlock(self.inplanes, planes, stride, downsample, conv_downsample)]
        self.inplanes = outplanes
        layers += [PreactBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.final_relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(name: str, blocks: int, conv_downsample: bool) -> None:
    def factory(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        require_no_pretrained(name, pretrained)
        return PreactResNetCifar([blocks] * 3, num_classes, in_channels, conv_downsample)

    shortcut = "1x1-convolution" if conv_downsample else "pooled, zero-padded"
    factory.__name__ = name
    factory.__doc__ = f"Pre-activation ResNet-{6 * blocks + 2} for CIFAR ({shortcut} downsampling shortcuts)."
    MODELS.add(name, factory)


for _depth, _blocks in ((20, 3), (32, 5), (44, 7), (56, 9), (110, 18)):
    _register(f"preact_resnet{_depth}_cifar", _blocks, False)
    _register(f"preact_resnet{_depth}_cifar_conv_ds", _blocks, True)
