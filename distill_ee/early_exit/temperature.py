"""Temperature scaling of exit logits (Guo et al., 2017): one temperature per early exit, fitted on validation.

A temperature ``T`` divides an exit's logits before its criterion looks at them; it never changes that exit's
prediction (the arg-max), only how confident the exit looks, so thresholds calibrated on scaled logits must
see scaled logits at inference. ``fold_temperatures`` makes that automatic: it divides the weight and bias of
each branch's last affine layer by ``T``, which is the same as dividing the branch's logits (the layers after
it, such as ReLU, pooling or flatten, commute with a positive scale), so the temperatures travel with the
branch weights in every checkpoint and export.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

#: temperatures are kept in this range (a degenerate exit could otherwise drive T to 0 or infinity)
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
#: layers after the last affine layer that commute with dividing by a positive number
_SCALE_FREE = (nn.ReLU, nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
               nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature minimising the cross-entropy of ``logits / T`` on ``targets`` (LBFGS on log T)."""
    if logits.shape[0] == 0:
        raise ConfigError("cannot fit a temperature on an empty validation split")
    logits = logits.detach().double()
    targets = targets.detach().long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    value = float(log_t.detach().exp())
    if not math.isfinite(value):
        return 1.0
    return min(MAX_TEMPERATURE, max(MIN_TEMPERATURE, value))


def fit_temperatures(exit_logits: Sequence[torch.Tensor], targets: torch.Tensor) -> List[float]:
    """One temperature per early exit (the final classifier, which takes every remaining sample, has none)."""
    return [fit_temperature(logits, targets) for logits in list(exit_logits)[:-1]]


def apply_temperatures(exit_logits: Sequence[torch.Tensor], temperatures: Optional[Sequence[float]]
                       ) -> List[torch.Tensor]:
    """Every early exit's logits divided by its temperature; the final classifier's unchanged."""
    logits = list(exit_logits)
    if temperatures is None:
        return logits
    if len(temperatures) != len(logits) - 1:
        raise ConfigError(f"need one temperature per early exit ({len(logits) - 1}), got {len(temperatures)}")
    return [l / float(t) for l, t in zip(logits, temperatures)] + [logits[-1]]


def last_affine_layer(branch: nn.Module) -> nn.Module:
    """The branch's last Linear / Conv layer, checked to be followed only by scale-free layers."""
    layers = [m for m in branch.modules() if not list(m.children())]
    for layer in reversed(layers):
        if isinstance(layer, _AFFINE):
            return layer
        if not isinstance(layer, _SCALE_FREE):
            break
    raise ConfigError(f"cannot fold a temperature into this branch: its logits must come from a Linear or Conv "
                      f"layer followed only by ReLU / pooling / flatten / dropout layers ({branch})")


@torch.no_grad()
def fold_temperature(branch: nn.Module, temperature: float) -> None:
    """Divide the weight and bias of ``branch``'s last affine layer by ``temperature``."""
    _check_temperature(temperature)
    layer = last_affine_layer(branch)
    layer.weight.div_(temperature)
    if layer.bias is not None:
        layer.bias.div_(temperature)


def _check_temperature(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"a temperature must be a positive number, got {value!r}")


def fold_temperatures(exit_set: Mapping[str, nn.Module], temperatures: Sequence[float]) -> None:
    """Fold one temperature per exit into the branches of ``exit_set`` (an ExitSet), in exit order."""
    names = list(exit_set.keys())
    if len(temperatures) != len(names):
        raise ConfigError(f"need one temperature per exit ({', '.join(names)}), got {len(temperatures)}")
    branches = exit_set
    for name, temperature in zip(names, temperatures):  # check everything before changing anything
        _check_temperature(temperature)
        last_affine_layer(branches[name])
    for name, temperature in zip(names, temperatures):
        fold_temperature(branches[name], float(temperature))
