"""RANet (Yang et al., "Resolution Adaptive Networks for Efficient Inference", CVPR 2020), compact.

Sub-networks read the image at increasing resolution, the lowest first. Each is a chain of dense blocks with a
classifier after every block; its blocks after the first halve the resolution. A sample runs the
low-resolution sub-network first and, only if no classifier there was confident, the next one: its blocks
fuse the lower sub-network's features of the same depth (brought to this block's resolution by a 1x1
convolution and upsampling, then concatenated), so the work done at low resolution is reused.

``forward`` runs every sub-network in that order and returns the last classifier's logits; the other
classifiers are declared through ``builtin_exits`` (``attach: builtin`` in an ``early_exits`` instance). Real
early exit therefore skips the higher-resolution sub-networks, input stem included, for the samples that
left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS


@dataclass(frozen=True)
class RANetConfig:
    """Sub-networks (input downsampling factor, lowest resolution first), blocks per sub-network, dense layers
    per block, growth rate, stem width and classifier width."""

    factors: Tuple[int, ...] = (2, 1)
    blocks: int = 2
    layers: int = 2
    growth: int = 8
    channels: int = 16
    classifier_channels: int = 32


def _conv_bn_relu(n_in: int, n_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(n_out), nn.ReLU())


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (4 x growth) - BN-ReLU-3x3 (growth), concatenated to the input."""

    def __init__(self, n_in: int, growth: int):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm2d(n_in), nn.ReLU(), nn.Conv2d(n_in, 4 * growth, 1, bias=False),
                                 nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                 nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``cat(x, new)``."""
        return torch.cat([x, self.net(x)], dim=1)


class RABlock(nn.Module):
    """[halve the resolution -] [fuse the lower sub-network's features -] dense layers - 1x1 transition."""

    def __init__(self, n_in: int, n_out: int, config: RANetConfig, down: bool, fuse_in: int, up: int):
        super().__init__()
        self.down = _conv_bn_relu(n_in, n_in, stride=2) if down else None
        self.fuse = _conv_bn_relu(fuse_in, n_in, kernel=1) if fuse_in else None
        self.up = up
        width = n_in * (2 if fuse_in else 1)
        layers = []
        for _ in range(config.layers):
            layers.append(DenseLayer(width, config.growth))
            width += config.growth
        self.dense = nn.Sequential(*layers)
        self.transition = _conv_bn_relu(width, n_out, kernel=1)
        #: the block's output (where its classifier reads)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor, low: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Block output; ``low`` is the lower sub-network's output at the same depth (fused blocks only)."""
        if self.down is not None:
            x = self.down(x)
        if self.fuse is not None:
            fused = self.fuse(low)
            if self.up > 1:
                fused = F.interpolate(fused, scale_factor=float(self.up), mode="nearest")
            x = torch.cat([x, fused], dim=1)
        return self.out(self.transition(self.dense(x)))


class SubNetwork(nn.Module):
    """One resolution: the downsampled input, a stem, then the blocks."""

    def __init__(self, in_channels: int, config: RANetConfig, index: int):
        super().__init__()
        factor = config.factors[index]
        self.factor = factor
        self.resize = nn.AvgPool2d(factor) if factor > 1 else nn.Identity()
        self.stem = _conv_bn_relu(in_channels, config.channels)
        up = config.factors[index - 1] // factor if index else 1
        width = config.channels
        blocks = []
        for j in range(config.blocks):
            blocks.append(RABlock(width, width * 2 if j else width, config, down=j > 0,
                                  fuse_in=(width * 2 if j else width) if index else 0, up=up))
            width = width * 2 if j else width
        self.blocks = nn.ModuleList(blocks)
        self.widths = [config.channels * 2 ** j for j in range(config.blocks)]

    def forward(self, x: torch.Tensor, lower: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        """Every block's output."""
        h = self.stem(self.resize(x))
        out = []
        for j, block in enumerate(self.blocks):
            h = block(h) if lower is None else block(h, lower[j])
            out.append(h)
        return out


def classifier_layers(config: RANetConfig) -> List[Any]:
    """A classifier as exit-branch layers: strided 3x3 conv-BN-ReLU, global average pooling, linear."""
    return [{"type": "conv", "out_channels": config.classifier_channels, "kernel_size": 3, "stride": 2,
             "padding": 1, "bias": False}, "bn", "relu", {"type": "adaptive_avgpool", "output_size": 1}, "flatten",
            {"type": "linear"}]


class RANet(nn.Module):
    """Resolution-adaptive network; ``forward`` gives the last classifier's logits, ``builtin_exits`` the others."""

    def __init__(self, config: RANetConfig, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if list(config.factors) != sorted(config.factors, reverse=True):
            raise ValueError(f"RANet's input factors go from the lowest resolution to the highest, got "
                             f"{config.factors}")
        self.config = config
        self.subnets = nn.ModuleList([SubNetwork(in_channels, config, i) for i in range(len(config.factors))])
        width = self.subnets[-1].widths[-1]
        self.classifier = nn.Sequential(_conv_bn_relu(width, config.classifier_channels, stride=2),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Linear(config.classifier_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last classifier's logits."""
        lower: Optional[List[torch.Tensor]] = None
        for subnet in self.subnets:
            lower = subnet(x, lower)
        return self.classifier(lower[-1])  # type: ignore[index]

    def builtin_exits(self) -> Dict[str, Dict[str, Any]]:
        """The classifier after every block but the last one's: exit name -> {attach, branch}."""
        points = [f"subnets.{i}.blocks.{j}.out" for i in range(len(self.subnets))
                  for j in range(self.config.blocks)][:-1]
        return {f"classifier{k + 1}": {"attach": p, "branch": classifier_layers(self.config)}
                for k, p in enumerate(points)}


#: a compact network for 1x28x28 digits: 14x14 then 28x28 sub-networks, two blocks each
MNIST = RANetConfig()


@MODELS.register("ranet_mnist")
def ranet_mnist(num_classes: int = 10, in_channels: int = 1, pretrained: bool = False) -> nn.Module:
    """A compact RANet for 1x28x28 digits (14x14 and 28x28 sub-networks, 4 classifiers)."""
    require_no_pretrained("ranet_mnist", pretrained)
    return RANet(MNIST, num_classes, in_channels)
