"""Pruning with splicing (Dynamic Network Surgery; Distiller's SplicingPruner).

Guo, Yao and Chen, "Dynamic Network Surgery for Efficient DNNs", NIPS 2016. With ``a`` and ``b`` the low
and high thresholds, the new mask of a weight W is::

    0            where |W| <  a
    previous     where a <= |W| < b
    1            where |W| >= b

so pruned connections come back (are spliced) when their weight grows again. Use it with a policy that
keeps updating the unmasked weights (``mask_on_forward_only``, optionally ``use_double_copies``) and
recomputes masks often (``mini_batch_pruning_frequency``), as in Distiller's network-surgery schedules.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from ..arguments import ParamMap
from ..errors import ScheduleError
from ..registry import PRUNERS
from .masks import ParameterMasker
from .pruner import Pruner, check_number, check_number_map, per_weight_value


@torch.no_grad()
def splice_mask(
    param: torch.Tensor, current_mask: torch.Tensor, threshold_low: float, threshold_hi: float
) -> torch.Tensor:
    """The network-surgery update of ``current_mask`` for the weights ``param``."""
    magnitude = param.abs()
    new_mask = torch.where(magnitude < threshold_low, torch.zeros_like(current_mask), current_mask)
    return torch.where(magnitude >= threshold_hi, torch.ones_like(current_mask), new_mask)


@PRUNERS.register()
class SplicingPruner(Pruner):
    """Prunes and splices connections around ``(mean|W| + sensitivity * std|W|) * {low,hi}_thresh_mult``.

    The mean and standard deviation of |W| are measured once per weight and kept (as in the authors'
    code). With ``sensitivity_multiplier > 0`` the sensitivity grows linearly with the epochs:
    ``sensitivity * (1 + (epoch - starting_epoch) * sensitivity_multiplier)``.
    """

    def __init__(
        self,
        name: str,
        sensitivities: ParamMap[float],
        low_thresh_mult: float,
        hi_thresh_mult: float,
        sensitivity_multiplier: float = 0,
    ):
        super().__init__(name)
        owner = f"SplicingPruner {name!r}"
        self.sensitivities = check_number_map(owner, "sensitivities", sensitivities)
        self.low_thresh_mult = check_number(owner, "low_thresh_mult", low_thresh_mult)
        self.hi_thresh_mult = check_number(owner, "hi_thresh_mult", hi_thresh_mult)
        self.sensitivity_multiplier = check_number(owner, "sensitivity_multiplier", sensitivity_multiplier)
        if self.low_thresh_mult > self.hi_thresh_mult:
            raise ScheduleError(f"{owner}: low_thresh_mult must not exceed hi_thresh_mult", path="low_thresh_mult")
        self.magnitude_stats: Dict[str, Tuple[float, float]] = {}

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` has a sensitivity of its own or there is a ``'*'`` default."""
        return per_weight_value(self.sensitivities, param_name) is not None

    def thresholds(self, param: torch.Tensor, param_name: str, meta: Dict[str, Any]) -> Tuple[float, float]:
        """The (low, high) thresholds of ``param`` at the epoch in ``meta``."""
        sensitivity = per_weight_value(self.sensitivities, param_name)
        if self.sensitivity_multiplier > 0:
            epochs_in = meta["current_epoch"] - (meta.get("starting_epoch") or 0)
            sensitivity *= epochs_in * self.sensitivity_multiplier + 1
        if param_name not in self.magnitude_stats:
            magnitude = param.detach().abs()
            self.magnitude_stats[param_name] = (magnitude.mean().item(), magnitude.std().item())
        mean, std = self.magnitude_stats[param_name]
        base = mean + std * sensitivity
        return base * self.low_thresh_mult, base * self.hi_thresh_mult

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Update the mask of ``param`` by the network-surgery rule (an absent mask counts as all ones)."""
        if not self.handles(param_name):
            return
        masker = zeros_mask_dict[param_name]
        current = masker.mask if masker.mask is not None else torch.ones_like(param)
        low, hi = self.thresholds(param, param_name, meta)
        masker.mask = splice_mask(param, current, low, hi)

    def state_dict(self) -> Dict[str, Any]:
        """The magnitude statistics measured so far."""
        return {"magnitude_stats": {k: list(v) for k, v in self.magnitude_stats.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the measured magnitude statistics."""
        stats = state.get("magnitude_stats", {})
        self.magnitude_stats = {str(k): (float(v[0]), float(v[1])) for k, v in stats.items()}
