"""Range-based linear quantization, with Distiller's modes and conventions.

A float ``x`` maps to an integer ``q = round(scale * x - zero_point)`` clamped to the integer range, and back to
``(q + zero_point) / scale``:

* ``SYMMETRIC``: ``scale = (2^(bits-1) - 1) / max|x|``, ``zero_point = 0``, integers in
  ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` (a range symmetric around 0);
* ``ASYMMETRIC_UNSIGNED``: ``scale = (2^bits - 1) / (max - min)``, ``zero_point = round(scale * min)``, integers
  in ``[0, 2^bits - 1]``; the range is widened to include 0 so that 0 is exact;
* ``ASYMMETRIC_SIGNED``: as unsigned, shifted by ``2^(bits-1)``: integers in ``[-2^(bits-1), 2^(bits-1) - 1]``.

Ranges come from statistics (``clip``): ``NONE`` the min and max seen, ``AVG`` the average over batches of each
batch's min and max, ``N_STD`` the mean plus/minus ``n`` standard deviations (within min and max). Weights may
take one range per output channel (``per_channel``).
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Mapping, Optional, Tuple

import torch

from ..errors import ConfigError
from ..registry import suggest


class LinearQuantMode(Enum):
    """Distiller's three modes."""

    SYMMETRIC = 1
    ASYMMETRIC_UNSIGNED = 2
    ASYMMETRIC_SIGNED = 3


class ClipMode(Enum):
    """How a range is taken from activation statistics."""

    NONE = 0
    AVG = 1
    N_STD = 2


def parse_enum(kind: Any, value: Any, what: str) -> Any:
    """``kind[value]`` from a schedule's string (case-insensitive); ConfigError with what is valid otherwise."""
    if isinstance(value, kind):
        return value
    names = [m.name for m in kind]
    if isinstance(value, str) and value.upper() in names:
        return kind[value.upper()]
    close = suggest(value.upper(), names) if isinstance(value, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{value!r} is not a {what} (valid: {', '.join(names)}){hint}")


def integer_range(bits: int, mode: LinearQuantMode) -> Tuple[int, int]:
    """(lowest, highest) integer of ``bits``-bit values in ``mode``."""
    if mode is LinearQuantMode.SYMMETRIC:
        top = 2 ** (bits - 1) - 1
        return -top, top
    if mode is LinearQuantMode.ASYMMETRIC_UNSIGNED:
        return 0, 2 ** bits - 1
    return -2 ** (bits - 1), 2 ** (bits - 1) - 1


def quant_params(low: torch.Tensor, high: torch.Tensor, bits: int, mode: LinearQuantMode
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) for the range [low, high] (tensors: one per channel, or scalars)."""
    low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    if mode is LinearQuantMode.SYMMETRIC:
        saturation = torch.maximum(low.abs(), high.abs())
        scale = (2 ** (bits - 1) - 1) / torch.where(saturation > 0, saturation, torch.ones_like(saturation))
        return scale, torch.zeros_like(scale)
    low, high = torch.minimum(low, torch.zeros_like(low)), torch.maximum(high, torch.zeros_like(high))
    span = high - low
    scale = (2 ** bits - 1) / torch.where(span > 0, span, torch.ones_like(span))
    zero_point = torch.round(scale * low)
    if mode is LinearQuantMode.ASYMMETRIC_SIGNED:
        zero_point = zero_point + 2 ** (bits - 1)
    return scale, zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
             mode: LinearQuantMode) -> torch.Tensor:
    """Integers (as floats) of ``x``: ``clamp(round(scale * x - zero_point))``."""
    lowest, highest = integer_range(bits, mode)
    return torch.clamp(torch.round(scale * x - zero_point), lowest, highest)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Floats of integers ``q``: ``(q + zero_point) / scale``."""
    return (q + zero_point) / scale


class _FakeQuantize(torch.autograd.Function):
    """Quantize then dequantize. The gradient passes straight through inside the representable range and is
    zero outside it (a saturated value does not move the loss), as in TensorFlow's and PyTorch's fake
    quantization: with a plain straight-through gradient, training from scratch with slowly tracked ranges
    diverges."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                mode: LinearQuantMode) -> torch.Tensor:
        lowest, highest = integer_range(bits, mode)
        q = scale * x - zero_point
        ctx.save_for_backward((q >= lowest - 0.5) & (q <= highest + 0.5))
        return dequantize(torch.clamp(torch.round(q), lowest, highest), scale, zero_point)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                  mode: LinearQuantMode) -> torch.Tensor:
    """``x`` as it is after quantization to ``bits`` and back (gradient: straight through within the range)."""
    return _FakeQuantize.apply(x, scale, zero_point, bits, mode)


def weight_range(weight: torch.Tensor, per_channel: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of a weight, per output channel (shaped to broadcast against it) or whole."""
    if not per_channel:
        return weight.min(), weight.max()
    flat = weight.detach().reshape(weight.shape[0], -1)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return flat.min(dim=1).values.reshape(shape), flat.max(dim=1).values.reshape(shape)


def stats_range(stats: Mapping[str, float], clip: ClipMode, n_std: float = 3.0) -> Tuple[float, float]:
    """The range a ``clip`` mode takes from one tensor's statistics (``min, max, avg_min, avg_max, mean, std``)."""
    if clip is ClipMode.AVG:
        return float(stats["avg_min"]), float(stats["avg_max"])
    if clip is ClipMode.N_STD:
        low = max(float(stats["min"]), float(stats["mean"]) - n_std * float(stats["std"]))
        high = min(float(stats["max"]), float(stats["mean"]) + n_std * float(stats["std"]))
        return low, high
    return float(stats["min"]), float(stats["max"])
