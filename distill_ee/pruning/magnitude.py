"""Magnitude pruning with a fixed threshold per weight (Distiller's MagnitudeParameterPruner)."""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from ..arguments import ParamMap
from ..registry import PRUNERS
from .per_weight import PerWeightPruner
from .pruner import binary_mask, check_number_map


@torch.no_grad()
def threshold_mask(param: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask keeping the elements whose magnitude is strictly above ``threshold``."""
    return binary_mask(param.abs() > threshold, param)


@PRUNERS.register()
class MagnitudeParameterPruner(PerWeightPruner):
    """Prunes every element whose magnitude is at most the weight's threshold.

    ``thresholds`` maps weight names to thresholds; the key ``'*'`` applies to every other parameter
    of the model (biases included, as in Distiller).
    """

    def __init__(self, name: str, thresholds: ParamMap[float]):
        super().__init__(name)
        self.thresholds = check_number_map(f"MagnitudeParameterPruner {name!r}", "thresholds", thresholds)

    def values(self) -> Mapping[str, float]:
        """The threshold of each weight."""
        return self.thresholds

    def mask_of(self, param: torch.Tensor, param_name: str, value: float) -> Optional[torch.Tensor]:
        """Mask the elements of ``param`` at or below its threshold."""
        return threshold_mask(param, value)
