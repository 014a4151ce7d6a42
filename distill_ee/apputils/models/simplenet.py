"""Distiller's simplenet_mnist and simplenet_v2_mnist (the PyTorch MNIST example network)."""
from __future__ import annotations

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.lenet import LeNet
from distill_ee.apputils.models.registry import MODELS


class Simplenet(LeNet):
    """Distiller's final simplenet_mnist is LeNet's layout: conv 20@5x5 - pool - conv 50@5x5 - pool - fc1 500 -
    fc2 (28x28 input)."""


class SimplenetV2(nn.Module):
    """Simplenet with one small classifier after global average pooling (26K parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        features = LeNet(num_classes, in_channels)
        for name in ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2"):
            self.add_module(name, getattr(features, name))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(self.flatten(self.avgpool(x)))


@MODELS.register("simplenet_mnist")
def simplenet_mnist(num_classes: int = 10, in_channels: int = 1, pretrained: bool = False) -> nn.Module:
    """Distiller's simplenet_mnist."""
    require_no_pretrained("simplenet_mnist", pretrained)
    return Simplenet(num_classes, in_channels)


@MODELS.register("simplenet_v2_mnist")
def simplenet_v2_mnist(num_classes: int = 10, in_channels: int = 1, pretrained: bool = False) -> nn.Module:
    """Distiller's simplenet_v2_mnist."""
    require_no_pretrained("simplenet_v2_mnist", pretrained)
    return SimplenetV2(num_classes, in_channels)
