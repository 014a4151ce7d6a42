"""Magnitude pruning with a fixed threshold per weight (Distiller's MagnitudeParameterPruner)."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..arguments import ParamMap
from ..registry import PRUNERS
from .masks import ParameterMasker
from .pruner import Pruner, binary_mask, check_number_map, per_weight_value


@torch.no_grad()
def threshold_mask(param: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask keeping the elements whose magnitude is strictly above ``threshold``."""
    return binary_mask(param.abs() > threshold, param)


@PRUNERS.register()
class MagnitudeParameterPruner(Pruner):
    """Prunes every element whose magnitude is at most the weight's threshold.

    ``thresholds`` maps weight names to thresholds; the key ``'*'`` applies to every other parameter
    of the model (biases included, as in Distiller).
    """

    def __init__(self, name: str, thresholds: ParamMap[float]):
        super().__init__(name)
        self.thresholds = check_number_map(f"MagnitudeParameterPruner {name!r}", "thresholds", thresholds)

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` has a threshold of its own or there is a ``'*'`` default."""
        return per_weight_value(self.thresholds, param_name) is not None

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Mask the elements of ``param`` at or below its threshold."""
        threshold = per_weight_value(self.thresholds, param_name)
        if threshold is None:
            return
        zeros_mask_dict[param_name].mask = threshold_mask(param, threshold)
