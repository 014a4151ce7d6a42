"""Pruner base class and the argument checks every pruner shares (Distiller's ``_ParameterPruner``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..errors import ScheduleError
from .masks import ParameterMasker

#: the key of a per-weight mapping that stands for "any other weight"
ANY_WEIGHT = "*"


class Pruner:
    """Decides the masks of the weights it names; a PruningPolicy tells it when.

    ``set_param_mask`` receives ``meta`` with ``current_epoch``, ``starting_epoch``, ``ending_epoch``,
    ``frequency`` and ``model``, and sets ``zeros_mask_dict[param_name].mask`` (or leaves it unchanged).
    """

    def __init__(self, name: str):
        self.name = name

    def handles(self, param_name: str) -> bool:
        """True when this pruner decides the mask of ``param_name``."""
        raise NotImplementedError

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Set the mask of ``param`` in ``zeros_mask_dict``; a weight it does not handle is left alone."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """What must survive a checkpoint for an exact resume."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def per_weight_value(values: Mapping[str, Any], param_name: str) -> Optional[Any]:
    """The value given for ``param_name``, else the ``'*'`` default, else None."""
    if param_name in values:
        return values[param_name]
    return values.get(ANY_WEIGHT)


def binary_mask(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0/1 mask with the dtype and device of ``like`` from a boolean ``keep`` tensor."""
    return keep.to(dtype=like.dtype, device=like.device)


def num_to_prune(count: int, fraction: float) -> int:
    """``floor(fraction * count)``, tolerant of float error (0.29 * 100 is 29, not 28)."""
    return int(math.floor(fraction * count + 1e-6))


def check_number(owner: str, arg: str, value: Any) -> float:
    """A real number, or a ScheduleError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScheduleError(f"{owner}: {arg} must be a finite number, got {value!r}", path=_top(arg))
    return float(value)


def check_number_map(owner: str, arg: str, values: Any) -> Dict[str, float]:
    """A ``{weight name: number}`` mapping, or a ScheduleError naming the argument."""
    if not isinstance(values, Mapping) or not values:
        raise ScheduleError(f"{owner}: {arg!r} must be a non-empty mapping of weight names to numbers", path=arg)
    return {str(key): check_number(owner, f"{arg}[{key!r}]", value) for key, value in values.items()}


def check_fraction(owner: str, arg: str, value: Any) -> float:
    """A number in [0, 1], or a ScheduleError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ScheduleError(f"{owner}: {arg} must be a fraction between 0 and 1, got {value!r}", path=_top(arg))
    return float(value)


def check_fraction_map(owner: str, arg: str, values: Any) -> Dict[str, float]:
    """A ``{weight name: fraction}`` mapping, or a ScheduleError."""
    out = check_number_map(owner, arg, values)
    for key, value in out.items():
        check_fraction(owner, f"{arg}[{key!r}]", value)
    return out


def check_weights(owner: str, weights: Any) -> List[str]:
    """A non-empty list of weight names, or a ScheduleError."""
    if isinstance(weights, str):
        weights = [weights]
    if not isinstance(weights, (list, tuple)) or not weights or not all(isinstance(w, str) for w in weights):
        raise ScheduleError(
            f"{owner}: 'weights' must be a non-empty list of weight names, got {weights!r}", path="weights"
        )
    return list(weights)


def _top(arg: str) -> str:
    """The argument's own name in an error path: ``levels`` for ``levels['fc.weight']``."""
    return arg.split("[", 1)[0]
