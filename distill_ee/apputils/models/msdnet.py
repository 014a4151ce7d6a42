"""MSDNet (Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image Classification", ICLR 2018).

Features are kept at several scales from the first layer on (``gr_factor`` sets each scale's width relative
to the finest). Every layer adds ``growth`` (times the scale's factor) new channels at every scale, computed
from the same scale (a "regular" convolution) and from the finer scale (a strided one), and concatenates them
to its input: dense connectivity across depth and scale. A classifier follows every block and reads the
coarsest scale. ``prune: max`` drops the finest scale at regular depths (with a 1x1 transition of
``reduction`` after each drop), ``prune: min`` only where the remaining layers can no longer reach the
coarsest scale. Block ``k`` holds ``base`` layers (k = 0), then ``step`` layers (``stepmode: even``) or
``step * k + 1`` (``lin_grow``).

The model's ``forward`` runs the blocks and the last classifier, a plain classifier. The classifiers after the
other blocks are declared through ``builtin_exits``: an ``early_exits`` schedule instance with
``attach: builtin`` builds and trains them as exits, takes them for real and counts their cost like any exit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Literal, Sequence, Tuple

import torch
from torch import nn

from distill_ee.apputils.models.factory import require_no_pretrained
from distill_ee.apputils.models.registry import MODELS

Features = List[torch.Tensor]


@dataclass(frozen=True)
class MSDNetConfig:
    """The paper's options (names as in its code: nBlocks, base, step, stepmode, nChannels, growthRate, ...)."""

    blocks: int = 7
    base: int = 4
    step: int = 2
    stepmode: Literal["even", "lin_grow"] = "even"
    channels: int = 16
    growth: int = 6
    gr_factor: Tuple[int, ...] = (1, 2, 4)
    bn_factor: Tuple[int, ...] = (1, 2, 4)
    bottleneck: bool = True
    prune: Literal["max", "min"] = "max"
    reduction: float = 0.5
    #: first layer and classifiers: ``cifar`` (3x3 first conv, 128-channel classifiers) or ``imagenet``
    #: (7x7/2 conv and max pooling first, classifiers as wide as their input)
    stem: Literal["cifar", "imagenet"] = "cifar"
    #: the classifiers' two convolutions' width (``cifar`` stem; the paper: 128)
    classifier_channels: int = 128

    @property
    def scales(self) -> int:
        """Number of scales."""
        return len(self.gr_factor)

    def steps(self) -> List[int]:
        """Layers per block."""
        return [self.base] + [self.step if self.stepmode == "even" else self.step * k + 1
                              for k in range(1, self.blocks)]


def _conv_bn_relu(n_in: int, n_out: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    # not in place: exits and thinning may read any layer's output
    return nn.Sequential(nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(n_out), nn.ReLU())


class ConvBN(nn.Module):
    """[1x1 bottleneck to min(n_in, bn_width * n_out) -] 3x3 convolution (stride 1 or 2), each with BN and ReLU."""

    def __init__(self, n_in: int, n_out: int, down: bool, bottleneck: bool, bn_width: int):
        super().__init__()
        layers: List[nn.Module] = []
        inner = n_in
        if bottleneck:
            inner = min(n_in, bn_width * n_out)
            layers += list(_conv_bn_relu(n_in, inner, kernel=1, padding=0))
        layers += list(_conv_bn_relu(inner, n_out, stride=2 if down else 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """New features."""
        return self.net(x)


class ConvNormal(nn.Module):
    """The finest output scale of a layer: its input and new features from the same scale."""

    def __init__(self, n_in: int, n_out: int, bottleneck: bool, bn_width: int):
        super().__init__()
        self.conv_normal = ConvBN(n_in, n_out, False, bottleneck, bn_width)

    def forward(self, x: Features) -> torch.Tensor:
        """``cat(x[0], new)``."""
        return torch.cat([x[0], self.conv_normal(x[0])], dim=1)


class ConvDownNormal(nn.Module):
    """A coarser output scale: its input, half the new features from the finer scale (strided), half from itself."""

    def __init__(self, n_in_fine: int, n_in: int, n_out: int, bottleneck: bool, bn_fine: int, bn_width: int):
        super().__init__()
        self.conv_down = ConvBN(n_in_fine, n_out // 2, True, bottleneck, bn_fine)
        self.conv_normal = ConvBN(n_in, n_out // 2, False, bottleneck, bn_width)

    def forward(self, x: Features) -> torch.Tensor:
        """``cat(x[1], down(x[0]), normal(x[1]))``."""
        return torch.cat([x[1], self.conv_down(x[0]), self.conv_normal(x[1])], dim=1)


class FirstLayer(nn.Module):
    """The features at every scale, from the image: one convolution per scale, each strided from the previous."""

    def __init__(self, in_channels: int, channels: int, config: MSDNetConfig):
        super().__init__()
        widths = [channels * g for g in config.gr_factor]
        if config.stem == "cifar":
            first: nn.Module = _conv_bn_relu(in_channels, widths[0])
        else:
            first = nn.Sequential(*_conv_bn_relu(in_channels, widths[0], kernel=7, stride=2, padding=3),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.layers = nn.ModuleList([first] + [_conv_bn_relu(widths[i - 1], widths[i], stride=2)
                                               for i in range(1, config.scales)])

    def forward(self, x: torch.Tensor) -> Features:
        """One tensor per scale, finest first."""
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class MSDLayer(nn.Module):
    """One layer: ``growth * gr_factor[s]`` new channels at each kept scale ``s``; drops ``in - out`` fine scales."""

    def __init__(self, n_in: int, growth: int, config: MSDNetConfig, in_scales: int, out_scales: int):
        super().__init__()
        self.discard = in_scales - out_scales
        self.out_scales = out_scales
        offset = config.scales - out_scales
        gr, bn = config.gr_factor, config.bn_factor
        layers: List[nn.Module] = []
        if self.discard > 0:
            layers.append(ConvDownNormal(n_in * gr[offset - 1], n_in * gr[offset], growth * gr[offset],
                                         config.bottleneck, bn[offset - 1], bn[offset]))
        else:
            layers.append(ConvNormal(n_in * gr[offset], growth * gr[offset], config.bottleneck, bn[offset]))
        for s in range(offset + 1, config.scales):
            layers.append(ConvDownNormal(n_in * gr[s - 1], n_in * gr[s], growth * gr[s], config.bottleneck,
                                         bn[s - 1], bn[s]))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Features) -> Features:
        """The kept scales, each the input's channels plus the new ones."""
        if self.discard > 0:
            inputs = [[x[s - 1], x[s]] for s in range(1, self.out_scales + 1)]
        else:
            inputs = [[x[0]]] + [[x[s - 1], x[s]] for s in range(1, self.out_scales)]
        return [layer(inp) for layer, inp in zip(self.layers, inputs)]


class Transition(nn.Module):
    """A 1x1 convolution per scale, reducing every scale's width by the same factor."""

    def __init__(self, widths: Sequence[Tuple[int, int]]):
        super().__init__()
        self.m = nn.ModuleList([_conv_bn_relu(a, b, kernel=1, padding=0) for a, b in widths])

    def forward(self, x: Features) -> Features:
        """Every scale reduced."""
        return [m(t) for m, t in zip(self.m, x)]


class MSDBlock(nn.Module):
    """Layers between two classifiers; ``coarsest`` marks the coarsest scale's output (where a classifier reads)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.coarsest = nn.Identity()

    def forward(self, x: Any) -> Features:
        """The features at every kept scale."""
        for layer in self.layers:
            x = layer(x)
        return [*x[:-1], self.coarsest(x[-1])]


def classifier_layers(config: MSDNetConfig, width: int) -> List[Any]:
    """A classifier as exit-branch layers: two strided 3x3 conv-BN-ReLU, 2x2 average pooling, a linear layer."""
    inner = config.classifier_channels if config.stem == "cifar" else width
    conv = {"type": "conv", "out_channels": inner, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False}
    return [conv, "bn", "relu", dict(conv), "bn", "relu", {"type": "avgpool", "kernel_size": 2}, "flatten",
            {"type": "linear"}]


class Classifier(nn.Module):
    """The last classifier (the same layers as ``classifier_layers``)."""

    def __init__(self, width: int, inner: int, num_classes: int):
        super().__init__()
        self.m = nn.Sequential(*_conv_bn_relu(width, inner, stride=2), *_conv_bn_relu(inner, inner, stride=2),
                               nn.AvgPool2d(2), nn.Flatten())
        self.linear = nn.Linear(inner, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.linear(self.m(x))


class MSDNet(nn.Module):
    """Multi-scale dense network; ``forward`` gives the last classifier's logits, ``builtin_exits`` the others."""

    def __init__(self, config: MSDNetConfig, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.config = config
        steps = config.steps()
        total = sum(steps)
        blocks, widths, done, n_in = [], [], 0, config.channels
        for k, step in enumerate(steps):
            layers: List[nn.Module] = [FirstLayer(in_channels, config.channels, config)] if k == 0 else []
            for _ in range(step):
                done += 1
                new, n_in = _layer(n_in, config, done, total)
                layers += new
            blocks.append(MSDBlock(layers))
            widths.append(n_in * config.gr_factor[-1])
        self.blocks = nn.ModuleList(blocks)
        #: the coarsest scale's width after each block
        self.widths = widths
        inner = config.classifier_channels if config.stem == "cifar" else widths[-1]
        self.classifier = Classifier(widths[-1], inner, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last classifier's logits."""
        for block in self.blocks:
            x = block(x)
        return self.classifier(x[-1])

    def builtin_exits(self) -> Dict[str, Dict[str, Any]]:
        """The classifiers after every block but the last: exit name -> {attach, branch}."""
        return {f"classifier{k + 1}": {"attach": f"blocks.{k}.coarsest",
                                       "branch": classifier_layers(self.config, self.widths[k])}
                for k in range(len(self.blocks) - 1)}


def _layer(n_in: int, config: MSDNetConfig, done: int, total: int) -> Tuple[List[nn.Module], int]:
    """Layer number ``done`` (1-based) of ``total`` and the transition after it, if any; the new width."""
    scales = config.scales
    if config.prune == "min":
        in_scales, out_scales = min(scales, total - done + 2), min(scales, total - done + 1)
    else:
        interval = math.ceil(total / scales)
        in_scales = scales - math.floor(max(0, done - 2) / interval)
        out_scales = scales - math.floor((done - 1) / interval)
    modules: List[nn.Module] = [MSDLayer(n_in, config.growth, config, in_scales, out_scales)]
    n_in += config.growth
    transition = config.reduction > 0 and (
        (config.prune == "max" and in_scales > out_scales)
        or (config.prune == "min" and done in (math.floor(total / 3), math.floor(2 * total / 3))))
    if transition:
        n_out = math.floor(config.reduction * n_in)
        offset = scales - out_scales
        modules.append(Transition([(n_in * config.gr_factor[offset + s], n_out * config.gr_factor[offset + s])
                                   for s in range(out_scales)]))
        n_in = n_out
    return modules, n_in


#: the paper's CIFAR network for anytime prediction (its code's README: 7 blocks, step 2, base 4)
CIFAR_ANYTIME = MSDNetConfig()
#: the paper's CIFAR network for budgeted batch classification (5 blocks, linear growth, step 1, base 1)
CIFAR_BATCH = replace(CIFAR_ANYTIME, blocks=5, base=1, step=1, stepmode="lin_grow")
#: ImageNet (5 blocks, step 4, 4 scales)
IMAGENET = MSDNetConfig(blocks=5, base=4, step=4, channels=32, growth=16, gr_factor=(1, 2, 4, 4),
                        bn_factor=(1, 2, 4, 4), stem="imagenet")
#: a compact network for 1x28x28 digits: scales 28, 14 and 7, six blocks of one layer
MNIST = MSDNetConfig(blocks=6, base=1, step=1, channels=8, growth=4, classifier_channels=32)


def _register(name: str, config: MSDNetConfig, doc: str) -> None:
    def factory(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        require_no_pretrained(name, pretrained)
        return MSDNet(config, num_classes, in_channels)

    factory.__name__ = name
    factory.__doc__ = doc
    MODELS.add(name, factory)


for _name, _config, _doc in (
    ("msdnet_cifar", CIFAR_ANYTIME, "MSDNet, the paper's CIFAR setting for anytime prediction (7 classifiers)."),
    ("msdnet_cifar_batch", CIFAR_BATCH, "MSDNet, the paper's CIFAR setting for budgeted batch (5 classifiers)."),
    ("msdnet_imagenet", IMAGENET, "MSDNet for 224x224 ImageNet (5 blocks of 4 layers, 4 scales)."),
    ("msdnet_mnist", MNIST, "A compact MSDNet for 1x28x28 digits (3 scales, 6 classifiers)."),
):
    _register(_name, _config, _doc)
