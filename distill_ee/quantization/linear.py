"""Range-based linear quantization, with Distiller's modes, clip modes and numbers exactly.

A float ``x`` maps to an integer ``q = round(scale * x - zero_point)`` clamped to the mode's integer range, and
back to ``(q + zero_point) / scale``. Each mode is one row of ``MODES``:

* ``SYMMETRIC``: ``scale = (2^bits - 1) / 2 / max|x|`` (127.5 / max|x| at 8 bits), ``zero_point = 0``, integers
  in ``[-2^(bits-1), 2^(bits-1) - 1]``;
* ``SYMMETRIC_RESTRICTED``: ``scale = (2^(bits-1) - 1) / max|x|`` (127 at 8 bits), integers in
  ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``: the range symmetric around 0 that TensorFlow's and ONNX Runtime's
  int8 weights use;
* ``ASYMMETRIC_UNSIGNED``: ``scale = (2^bits - 1) / (max - min)``, ``zero_point = round(scale * min)``, integers
  in ``[0, 2^bits - 1]``; the range is widened to include 0 so that 0 is exact;
* ``ASYMMETRIC_SIGNED``: as unsigned, shifted by ``2^(bits-1)``: integers in ``[-2^(bits-1), 2^(bits-1) - 1]``.

A tensor that is all zeros gets scale 1. Ranges come from statistics or, dynamically, from the tensor itself
(``clip``, one row of ``CLIPS`` each): ``NONE`` the min and max; ``AVG`` the average of each sample's min and
max; ``N_STD`` the mean plus/minus ``n`` standard deviations (within min and max); ``GAUSS`` and ``LAPLACE``
ACIQ's analytical clipping (Banner et al., 2019) from the standard deviation or the mean absolute deviation
``b``, for 1 to 8 bits (``half_range``: the tensor is known non-negative). Weights may take one range per output
channel (``per_channel``).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from ..errors import ConfigError
from ..registry import suggest


class LinearQuantMode(Enum):
    """Distiller's four modes."""

    SYMMETRIC = 1
    SYMMETRIC_RESTRICTED = 2
    ASYMMETRIC_UNSIGNED = 3
    ASYMMETRIC_SIGNED = 4


class ClipMode(Enum):
    """How a range is taken from a tensor or its statistics."""

    NONE = 0
    AVG = 1
    N_STD = 2
    GAUSS = 3
    LAPLACE = 4


@dataclass(frozen=True)
class ModeRule:
    """One mode's numbers at ``bits``: how many steps its range spans and its integers."""

    symmetric: bool
    steps: Callable[[int], float]  # scale = steps / saturation (symmetric) or steps / (max - min)
    integers: Callable[[int], Tuple[int, int]]
    zero_shift: Callable[[int], int] = lambda bits: 0  # added to the zero point


MODES: Dict[LinearQuantMode, ModeRule] = {
    LinearQuantMode.SYMMETRIC: ModeRule(True, lambda b: (2 ** b - 1) / 2,
                                        lambda b: (-2 ** (b - 1), 2 ** (b - 1) - 1)),
    LinearQuantMode.SYMMETRIC_RESTRICTED: ModeRule(True, lambda b: 2 ** (b - 1) - 1,
                                                   lambda b: (-(2 ** (b - 1) - 1), 2 ** (b - 1) - 1)),
    LinearQuantMode.ASYMMETRIC_UNSIGNED: ModeRule(False, lambda b: 2 ** b - 1, lambda b: (0, 2 ** b - 1)),
    LinearQuantMode.ASYMMETRIC_SIGNED: ModeRule(False, lambda b: 2 ** b - 1,
                                                lambda b: (-2 ** (b - 1), 2 ** (b - 1) - 1),
                                                lambda b: 2 ** (b - 1)),
}


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
    return MODES[mode].integers(bits)


def quant_params(low: torch.Tensor, high: torch.Tensor, bits: int, mode: LinearQuantMode
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) for the range [low, high] (tensors: one per channel, or scalars)."""
    low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    rule = MODES[mode]
    steps = rule.steps(bits)
    if rule.symmetric:
        saturation = torch.maximum(low.abs(), high.abs())
        # an all-zero tensor: scale 1, so that its integers are 0 too
        scale = steps / torch.where(saturation > 0, saturation, torch.full_like(saturation, steps))
        return scale, torch.zeros_like(scale)
    low, high = torch.minimum(low, torch.zeros_like(low)), torch.maximum(high, torch.zeros_like(high))
    span = high - low
    scale = steps / torch.where(span > 0, span, torch.full_like(span, steps))
    return scale, torch.round(scale * low) + rule.zero_shift(bits)


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


#: ACIQ's clipping value in units of the standard deviation (Gauss) or of ``b`` (Laplace), by bits, for a
#: tensor of both signs and for one known non-negative (Banner et al., 2019; Distiller's tables)
ALPHA_LAPLACE = {0: 1.05, 1: 1.86, 2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
ALPHA_LAPLACE_POSITIVE = {0: 1.86, 1: 2.83, 2: 3.89, 3: 5.02, 4: 6.2, 5: 7.41, 6: 8.64, 7: 9.89, 8: 11.16}
ALPHA_GAUSS = {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92}
ALPHA_GAUSS_POSITIVE = {1: 1.71, 2: 2.15, 3: 2.55, 4: 2.93, 5: 3.28, 6: 3.61, 7: 3.92, 8: 4.2}
#: the bits ACIQ's tables cover
ACIQ_BITS = (1, 8)


@dataclass(frozen=True)
class Moments:
    """What a clip mode reads of one tensor: its min and max, the average of its samples' min and max, its
    mean, standard deviation and mean absolute deviation ``b`` (None where not known), and the floor of ACIQ's
    asymmetric range (Distiller: the average min in a statistics file, the min of a tensor itself)."""

    min: float
    max: float
    avg_min: float
    avg_max: float
    mean: float
    std: float
    b: Optional[float]
    aciq_floor: float

    @classmethod
    def of_stats(cls, stats: Mapping[str, Any]) -> "Moments":
        """From a statistics file's entry (``b`` only in files that have it)."""
        b = stats.get("b")
        return cls(*(float(stats[k]) for k in ("min", "max", "avg_min", "avg_max", "mean", "std")),
                   None if b is None else float(b), float(stats["avg_min"]))

    @classmethod
    def of_tensor(cls, x: torch.Tensor) -> "Moments":
        """From a tensor itself, as Distiller's dynamic quantization takes them: per-sample min and max over
        dimension 0, the unbiased standard deviation."""
        x = x.detach().float()
        per_sample = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1)
        mean = x.mean()
        low = float(x.min())
        return cls(low, float(x.max()), float(per_sample.min(dim=1).values.mean()),
                   float(per_sample.max(dim=1).values.mean()), float(mean), float(x.std()),
                   float((x - mean).abs().mean()), low)


def _aciq(m: Moments, bits: int, laplace: bool, half_range: bool) -> float:
    if laplace:
        if m.b is None:
            raise ConfigError("LAPLACE clipping needs the statistics' `b` (mean absolute deviation); collect "
                              "them again (--qe-calibration), Distiller's collector writes it too")
        return m.b * (ALPHA_LAPLACE_POSITIVE if half_range else ALPHA_LAPLACE)[bits]
    return m.std * (ALPHA_GAUSS_POSITIVE if half_range else ALPHA_GAUSS)[bits]


def _aciq_range(laplace: bool) -> Callable[..., Tuple[float, float]]:
    def clip(m: Moments, n_std: float, bits: int, symmetric: bool, half_range: bool) -> Tuple[float, float]:
        if symmetric:  # Distiller's symmetric ACIQ ignores half_range
            edge = abs(m.mean) + _aciq(m, bits, laplace, False)
            return -edge, edge
        alpha = _aciq(m, bits, laplace, half_range)
        low = max(m.aciq_floor, m.mean - alpha)
        return low, low + (alpha if half_range else 2 * alpha)
    return clip


#: each clip mode's range from a tensor's moments (n_std, bits, symmetric, half_range as the modes need them)
CLIPS: Dict[ClipMode, Callable[..., Tuple[float, float]]] = {
    ClipMode.NONE: lambda m, *_: (m.min, m.max),
    ClipMode.AVG: lambda m, *_: (m.avg_min, m.avg_max),
    ClipMode.N_STD: lambda m, n_std, *_: (max(m.min, m.mean - n_std * m.std), min(m.max, m.mean + n_std * m.std)),
    ClipMode.GAUSS: _aciq_range(laplace=False),
    ClipMode.LAPLACE: _aciq_range(laplace=True),
}


def clip_range(moments: Moments, clip: ClipMode, n_std: float = 3.0, bits: int = 8,
               mode: LinearQuantMode = LinearQuantMode.ASYMMETRIC_UNSIGNED, half_range: bool = False
               ) -> Tuple[float, float]:
    """The range ``clip`` takes from a tensor's moments, for ``bits``-bit values in ``mode``."""
    if clip in (ClipMode.GAUSS, ClipMode.LAPLACE) and not ACIQ_BITS[0] <= bits <= ACIQ_BITS[1]:
        raise ConfigError(f"{clip.name} clipping is defined for {ACIQ_BITS[0]} to {ACIQ_BITS[1]} bits, got {bits}")
    return CLIPS[clip](moments, n_std, bits, MODES[mode].symmetric, half_range)


def stats_range(stats: Mapping[str, Any], clip: ClipMode, n_std: float = 3.0, bits: int = 8,
                mode: LinearQuantMode = LinearQuantMode.ASYMMETRIC_UNSIGNED, half_range: bool = False
                ) -> Tuple[float, float]:
    """The range a ``clip`` mode takes from one tensor's statistics (``min, max, avg_min, avg_max, mean, std``
    and, for LAPLACE, ``b``)."""
    return clip_range(Moments.of_stats(stats), clip, n_std, bits, mode, half_range)


def tensor_range(x: torch.Tensor, clip: ClipMode, n_std: float = 3.0, bits: int = 8,
                 mode: LinearQuantMode = LinearQuantMode.ASYMMETRIC_UNSIGNED, half_range: bool = False
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The range a ``clip`` mode takes from the tensor itself (dynamic quantization), as 0-d tensors."""
    if clip is ClipMode.NONE:  # the common case, without leaving the tensor's device
        return x.detach().min(), x.detach().max()
    low, high = clip_range(Moments.of_tensor(x), clip, n_std, bits, mode, half_range)
    return torch.tensor(low, device=x.device), torch.tensor(high, device=x.device)
