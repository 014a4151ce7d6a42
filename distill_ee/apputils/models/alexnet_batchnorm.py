"""Distiller's AlexNet with batch normalization (TensorPack's DoReFa-Net AlexNet), keeping Distiller's module names.

The layers are ``features.0`` .. ``features.16`` and ``classifier.0`` .. ``classifier.6`` in Distiller's order
(``features.0`` the 12x12 stem convolution, ``classifier.6`` the last Linear), so its alexnet_bn schedules
apply unchanged. Inputs are 224x224: the features end at 256x6x6.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS


def _bn2d(channels: int) -> nn.BatchNorm2d:
    # Distiller's settings: eps 1e-4 and momentum 0.9 (PyTorch's meaning, the weight of the current batch).
    return nn.BatchNorm2d(channels, eps=1e-4, momentum=0.9)


def _bn1d(features: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(features, eps=1e-4, momentum=0.9)


class AlexNetBN(nn.Module):
    """Five convolutions (three of them in two groups) with batch norms, then three Linear layers."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        # Not in place: quantizers and exits may read a layer's output after the ReLU that follows it.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=12, stride=4),                 # 224x224 -> 54x54
            nn.ReLU(inplace=False),
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2, bias=False),
            _bn2d(256),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),                # -> 27x27
            nn.ReLU(inplace=False),
            nn.Conv2d(256, 384, kernel_size=3, padding=1, bias=False),
            _bn2d(384),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),                     # -> 14x14
            nn.ReLU(inplace=False),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2, bias=False),
            _bn2d(384),
            nn.ReLU(inplace=False),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2, bias=False),
            _bn2d(256),
            nn.MaxPool2d(kernel_size=3, stride=2),                                # -> 6x6
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096, bias=False),
            _bn1d(4096),
            nn.ReLU(inplace=False),
            nn.Linear(4096, 4096, bias=False),
            _bn1d(4096),
            nn.ReLU(inplace=False),
            nn.Linear(4096, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # Distiller's: N(0, 2 / (k*k*in_channels)) with the full input width even for grouped convolutions.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) \
                    else m.in_features
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(torch.flatten(self.features(x), 1))


def alexnet_bn(num_classes: int = 1000, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    """AlexNet with batch normalization for ImageNet-sized images (Distiller's AlexNetBN)."""
    require_no_pretrained("alexnet_bn", pretrained)
    return AlexNetBN(num_classes, in_channels)


MODELS.add("alexnet_bn", alexnet_bn)
