"""Small models for the early-exit tests: LeNet-like, a CIFAR ResNet with residual blocks, torchvision's resnet18."""
from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from distill_ee.early_exit.attach import attach_exits
from distill_ee.early_exit.hooks import ExitHooks
from distill_ee.early_exit.spec import parse_early_exit_config

POOL_HEAD = ["adaptive_avgpool", "flatten", "linear"]


class LeNet(nn.Module):
    """LeNet-5 style: conv, pool, conv, pool, three linears; flattens with ``x.view(x.size(0), -1)``."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Block(nn.Module):
    """Basic residual block; the shortcut is a 1x1 conv when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetCifar(nn.Module):
    """A three-stage CIFAR ResNet with few channels."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16))
        self.layer3 = nn.Sequential(Block(16, 32, 2), Block(32, 32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics so eval-mode outputs differ between samples and exits."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def exits_config(attach: List[str], branch=None, **extra) -> Dict:
    """An early-exit instance config with one exit per attach point (exit1, exit2, ...)."""
    branch = branch if branch is not None else POOL_HEAD
    exits = {f"exit{i + 1}": {"attach": a, "branch": list(branch)} for i, a in enumerate(attach)}
    return {"exits": exits, **extra}


@pytest.fixture
def lenet() -> LeNet:
    torch.manual_seed(0)
    return LeNet().eval()


@pytest.fixture
def resnet_cifar() -> ResNetCifar:
    torch.manual_seed(0)
    return randomize_bn(ResNetCifar()).eval()


@pytest.fixture
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()


def attach(model: nn.Module, config: Dict, input_shape=(1, 28, 28), num_classes: int = 10) -> ExitHooks:
    """Parse ``config``, attach its exits to ``model``; the (disabled) training hooks of the exits."""
    spec = parse_early_exit_config(config)
    attach_exits(model, spec, num_classes=num_classes, input_shape=input_shape)
    return ExitHooks(model)


@pytest.fixture
def ee() -> SimpleNamespace:
    """The models and config builders above (conftest modules are not importable under --import-mode=importlib)."""
    return SimpleNamespace(LeNet=LeNet, ResNetCifar=ResNetCifar, exits_config=exits_config, attach=attach,
                           randomize_bn=randomize_bn, POOL_HEAD=POOL_HEAD)
