"""Every torchvision classifier under its torchvision name; pretrained weights only from the local hub cache."""
from __future__ import annotations

import os
from typing import Any, Dict
from urllib.parse import urlparse

import torch
from torch import nn

from distill_ee.errors import ConfigError
from distill_ee.apputils.models.registry import MODELS

# Auxiliary heads would make these return tuples in training mode; a plain classifier returns logits only
# (with weights, drop_aux_heads removes them after loading, as torchvision refuses aux_logits=False then).
_SCRATCH_KWARGS: Dict[str, Dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class TorchvisionModel:
    """Factory of one torchvision classifier, adapted to the dataset's classes and input channels."""

    def __init__(self, name: str):
        self.name = name
        self.__name__ = name
        self.__doc__ = f"torchvision's {name}, with a new head and first convolution when the data needs them."

    def __call__(self, num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        """Build the model; with ``pretrained`` the cached ImageNet weights are loaded first."""
        from torchvision import models

        if pretrained:
            weights = cached_weights(self.name)
            model = models.get_model(self.name, weights=weights)
            drop_aux_heads(model)
            if num_classes != len(weights.meta["categories"]):
                replace_head(model, len(weights.meta["categories"]), num_classes)
        else:
            kwargs = _SCRATCH_KWARGS.get(self.name, {})
            model = models.get_model(self.name, weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            adapt_first_conv(model, in_channels, keep_weights=pretrained)
        return model

    def __repr__(self) -> str:
        return f"TorchvisionModel({self.name!r})"


def register_torchvision_models() -> int:
    """Register each torchvision classifier not yet in MODELS; the number added (0 without torchvision)."""
    try:
        from torchvision import models
    except ImportError:
        return 0
    added = 0
    for name in models.list_models(module=models):
        if name not in MODELS:
            MODELS.add(name, TorchvisionModel(name))
            added += 1
    return added


def cached_weights(name: str) -> Any:
    """The default weights enum of ``name`` if its file is in the torch hub cache; ConfigError otherwise."""
    from torchvision import models

    try:
        weights = models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"torchvision has no pretrained weights for {name!r}") from exc
    filename = os.path.basename(urlparse(weights.url).path)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        raise ConfigError(
            f"pretrained weights for {name!r} are not on disk (expected {path}) and nothing is downloaded; "
            "copy the file there or train without --pretrained"
        )
    return weights


def drop_aux_heads(model: nn.Module) -> None:
    """Remove GoogLeNet/Inception auxiliary classifiers so training returns plain logits."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def replace_head(model: nn.Module, old_classes: int, num_classes: int) -> None:
    """Swap the last layer producing ``old_classes`` outputs for a fresh one producing ``num_classes``."""
    heads = [(n, m) for n, m in model.named_modules() if _out_features(m) == old_classes]
    if not heads:
        raise ConfigError(f"cannot find the classifier layer of {type(model).__name__} to resize it")
    name, old = heads[-1]
    model.set_submodule(name, _resized(old, out=num_classes))


def adapt_first_conv(model: nn.Module, in_channels: int, keep_weights: bool = False) -> None:
    """Make the first 3-channel convolution take ``in_channels`` (pretrained kernels spread over channels)."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels != 3 or first[1].groups != 1:
        raise ConfigError(f"cannot adapt {type(model).__name__} to {in_channels} input channels")
    name, old = first
    new = _resized(old, inp=in_channels)
    if keep_weights:
        with torch.no_grad():
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
            if old.bias is not None:
                new.bias.copy_(old.bias)
    model.set_submodule(name, new)
    if getattr(model, "transform_input", False):
        # The ImageNet re-normalisation in GoogLeNet/Inception assumes three channels.
        model.transform_input = False


def _out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return -1


def _resized(layer: nn.Module, inp: int = 0, out: int = 0) -> nn.Module:
    """A freshly initialised copy of a Linear or Conv2d with other input/output sizes."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Linear(inp or layer.in_features, out or layer.out_features, bias=bias)
    return nn.Conv2d(
        inp or layer.in_channels,
        out or layer.out_channels,
        kernel_size=layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=bias,
        padding_mode=layer.padding_mode,
    )
