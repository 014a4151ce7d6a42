"""Distiller's CIFAR-10 VGGs: torchvision's feature stacks with one Linear classifier."""
from __future__ import annotations

from typing import List, Union

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGGCifar(nn.Module):
    """``features`` (a Sequential of conv/relu/pool) then ``classifier`` Linear(512, num_classes)."""

    def __init__(self, features: nn.Sequential, num_classes: int = 10):
        super().__init__()
        self.features = features
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (32x32 input, so the features end at 512x1x1)."""
        return self.classifier(self.flatten(self.features(x)))


def make_layers(cfg: List[Union[int, str]], in_channels: int = 3, batch_norm: bool = False) -> nn.Sequential:
    """The feature stack of a VGG configuration; 'M' is a 2x2 max pool."""
    layers: List[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=False))
        in_channels = int(v)
    return nn.Sequential(*layers)


def _register(base: str, batch_norm: bool) -> None:
    name = f"{base}{'_bn' if batch_norm else ''}_cifar"

    def factory(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        require_no_pretrained(name, pretrained)
        return VGGCifar(make_layers(CONFIGS[base], in_channels, batch_norm), num_classes)

    factory.__name__ = name
    factory.__doc__ = f"{base.upper()} for CIFAR{' with batch normalization' if batch_norm else ''}."
    MODELS.add(name, factory)


for _base in CONFIGS:
    for _bn in (False, True):
        _register(_base, _bn)
