"""QuantizationSet: simulated (fake) quantization of a model's convolutions and linear layers, names kept.

Attached as ``model.quantization``, the set holds every quantized layer's settings and its activation ranges
(buffers, saved with ``model.state_dict()``). Each quantized layer keeps its parameters where they are
(``conv1.weight`` stays ``conv1.weight``, so pruning masks, exits and schedules still find them); only its
``forward`` goes through the set, which quantizes the layer's input, its weights (from the current float
weights, per output channel if asked) and its output, each to its bits and mode, and computes in float in
between (what integer kernels give, up to the accumulator's rounding). Pruned weights stay exactly zero: both
modes represent 0 exactly.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DistillEEError
from .linear import ClipMode, LinearQuantMode, fake_quantize, quant_params, stats_range, weight_range

#: the attribute of the user's model that holds its QuantizationSet
QUANT_ATTR = "quantization"
QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass
class LayerSettings:
    """How one layer is quantized (Distiller's arguments, after overrides)."""

    bits_activations: Optional[int] = 8
    bits_weights: Optional[int] = 8
    bits_inputs: Optional[int] = 8
    mode_activations: str = "SYMMETRIC"
    mode_weights: str = "SYMMETRIC"
    per_channel_wts: bool = False
    clip_acts: str = "NONE"
    clip_n_stds: float = 3.0

    def to_config(self) -> Dict[str, Any]:
        """Plain values."""
        return asdict(self)


class _Ranges(nn.Module):
    """One layer's activation ranges (input and output), as buffers."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("in_low", "in_high", "out_low", "out_high"):
            self.register_buffer(name, torch.zeros(()))


class QuantizationSet(nn.Module):
    """The quantized layers of a model by name, their settings and activation ranges."""

    def __init__(self, settings: Mapping[str, LayerSettings], instance_name: str = ""):
        super().__init__()
        self.settings: Dict[str, LayerSettings] = dict(settings)
        self.ranges = nn.ModuleDict({_key(n): _Ranges() for n in self.settings})
        self.instance_name = instance_name
        self.active = True

    @property
    def layers(self) -> List[str]:
        """Quantized layer names."""
        return list(self.settings)

    # ----------------------------------------------------------------- ranges
    def set_ranges(self, stats: Mapping[str, Any]) -> None:
        """Activation ranges of every layer from statistics (``stats.collect_stats`` / a stats file)."""
        missing = [n for n in self.settings if n not in stats]
        if missing:
            raise DistillEEError(f"the activation statistics lack layer {missing[0]!r} (they must come from the "
                                 f"same model)")
        for name, s in self.settings.items():
            clip = ClipMode[s.clip_acts]
            inputs = stats[name].get("inputs") or {}
            first = inputs.get(0, inputs.get("0"))
            if first is None:
                raise DistillEEError(f"the activation statistics lack the input of layer {name!r}")
            r = self.ranges[_key(name)]
            low, high = stats_range(first, clip, s.clip_n_stds)
            r.in_low.fill_(low)
            r.in_high.fill_(high)
            low, high = stats_range(stats[name]["output"], clip, s.clip_n_stds)
            r.out_low.fill_(low)
            r.out_high.fill_(high)

    # ----------------------------------------------------------------- forward
    def run(self, name: str, module: nn.Module, original: Any, x: torch.Tensor) -> torch.Tensor:
        """The layer ``name`` with its input, weights and output quantized (the float layer when inactive)."""
        if not self.active:
            return original(x)
        s, r = self.settings[name], self.ranges[_key(name)]
        if s.bits_inputs:
            x = _fake(x, r.in_low, r.in_high, s.bits_inputs, s.mode_activations)
        weight = module.weight
        if s.bits_weights:
            low, high = weight_range(weight.detach(), s.per_channel_wts)
            weight = _fake(weight, low, high, s.bits_weights, s.mode_weights)
        if isinstance(module, nn.Conv2d):
            out = module._conv_forward(x, weight, module.bias)
        else:
            out = F.linear(x, weight, module.bias)
        if s.bits_activations:
            out = _fake(out, r.out_low, r.out_high, s.bits_activations, s.mode_activations)
        return out


def _key(name: str) -> str:
    return name.replace(".", "__")


def _fake(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bits: int, mode: str) -> torch.Tensor:
    m = LinearQuantMode[mode]
    scale, zero_point = quant_params(low.to(x.device), high.to(x.device), bits, m)
    return fake_quantize(x, scale, zero_point, bits, m)


def quantization_of(model: nn.Module) -> Optional[QuantizationSet]:
    """The model's QuantizationSet (None when it has none)."""
    found = getattr(model, QUANT_ATTR, None)
    return found if isinstance(found, QuantizationSet) else None


def attach_quantization(model: nn.Module, qset: QuantizationSet) -> QuantizationSet:
    """Register ``qset`` as ``model.quantization`` and route its layers' forward through it."""
    if hasattr(model, QUANT_ATTR):
        raise DistillEEError(f"the model already has an attribute {QUANT_ATTR!r}: it is quantized once")
    modules = dict(model.named_modules())
    for name in qset.layers:
        module = modules.get(name)
        if not isinstance(module, QUANTIZABLE):
            raise DistillEEError(f"{name!r} is not a convolution or linear layer of the model")
        original = type(module).forward.__get__(module)
        module.forward = functools.partial(qset.run, name, module, original)
    setattr(model, QUANT_ATTR, qset)
    return qset


def detach_quantization(model: nn.Module) -> Optional[QuantizationSet]:
    """Remove the quantization; the layers run in float again."""
    qset = quantization_of(model)
    if qset is None:
        return None
    modules = dict(model.named_modules())
    for name in qset.layers:
        modules[name].__dict__.pop("forward", None)
    delattr(model, QUANT_ATTR)
    return qset


def quantizable_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every convolution and linear layer of the model, exit branches included (they run at
    inference too)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
