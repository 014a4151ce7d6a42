"""BlockDrop's policy network (Wu et al., 2018): a small ResNet on a downsampled image giving K keep logits.

The paper uses a ResNet-8 on the image at a lower resolution; here its width, number of residual blocks and
downsampling factor are the schedule's (``policy_width``, ``policy_blocks``, ``policy_downsample``).
"""
from __future__ import annotations

import torch
from torch import nn


class _Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the input, then relu."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output."""
        return self.relu(x + self.body(x))


class PolicyNet(nn.Module):
    """Image -> K keep logits: average-pool downsampling, a stem, residual blocks, pooling, a linear layer."""

    def __init__(self, in_channels: int, num_blocks: int, width: int = 16, blocks: int = 1, downsample: int = 2):
        super().__init__()
        self.downsample = nn.AvgPool2d(downsample) if downsample > 1 else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[_Residual(width) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Keep logits (N, K)."""
        return self.fc(self.pool(self.blocks(self.stem(self.downsample(x)))).flatten(1))
