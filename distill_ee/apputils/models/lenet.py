"""B-LeNet, BranchyNet's LeNet backbone for MNIST, with every op an addressable submodule."""
from __future__ import annotations

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS


class LeNet(nn.Module):
    """conv 20@5x5 - relu - pool - conv 50@5x5 - relu - pool - fc 500 - relu - fc (28x28 input)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)


@MODELS.register("lenet_mnist")
def lenet_mnist(num_classes: int = 10, in_channels: int = 1, pretrained: bool = False) -> nn.Module:
    """BranchyNet's B-LeNet backbone for 28x28 digits."""
    require_no_pretrained("lenet_mnist", pretrained)
    return LeNet(num_classes, in_channels)
