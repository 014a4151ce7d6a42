"""Build a model by architecture name: the single entry point over the MODELS registry."""
from __future__ import annotations

from typing import Callable, List

from torch import nn

from distill_ee.errors import ConfigError
from distill_ee.apputils.models.registry import MODELS


def create_model(arch: str, num_classes: int, in_channels: int, pretrained: bool = False) -> nn.Module:
    """A fresh model ``arch`` for ``num_classes`` classes and ``in_channels`` input channels.

    Unknown names raise ``UnknownNameError`` listing close names; ``pretrained=True`` raises ConfigError
    unless the weights are already on disk (nothing is ever downloaded).
    """
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if int(in_channels) < 1:
        raise ConfigError(f"in_channels must be at least 1, got {in_channels}")
    factory = _lookup(arch)
    return factory(num_classes=int(num_classes), in_channels=int(in_channels), pretrained=bool(pretrained))


def list_models(pattern: str = "*") -> List[str]:
    """Registered architecture names matching a shell-style ``pattern`` (torchvision ones included)."""
    _register_torchvision()
    return MODELS.names(pattern)


def require_no_pretrained(arch: str, pretrained: bool) -> None:
    """Refuse ``pretrained=True`` for architectures that ship no weights."""
    if pretrained:
        raise ConfigError(f"no pretrained weights exist for {arch!r}; train it from scratch (drop --pretrained)")


def _lookup(arch: str) -> Callable[..., nn.Module]:
    """The factory of ``arch`` (UnknownNameError with close names if there is none)."""
    if arch not in MODELS:
        _register_torchvision()
    return MODELS.get(arch)


def _register_torchvision() -> None:
    # Imported on demand: importing torchvision takes seconds and the built-in zoo does not need it.
    from distill_ee.apputils.models.torchvision_models import register_torchvision_models

    register_torchvision_models()
