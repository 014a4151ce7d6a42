"""L1 regularization: ``strength * sum(|w|)`` per weight (Distiller's L1Regularizer)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ..arguments import ParamMap
from ..pruning.magnitude import threshold_mask
from ..pruning.masks import ParameterMasker
from ..pruning.pruner import check_number_map
from ..registry import REGULARIZERS
from .regularizer import Regularizer


@REGULARIZERS.register()
class L1Regularizer(Regularizer):
    """Element-wise L1 penalty; ``reg_regims`` maps weight names to strengths.

    With a ``threshold_criteria``, thresholding zeroes the elements whose magnitude is at most the
    weight's strength (the criterion makes no difference for single elements).
    """

    def __init__(
        self,
        name: str,
        model: Optional[nn.Module],
        reg_regims: ParamMap[float],
        threshold_criteria: Optional[str] = None,
    ):
        regims = check_number_map(f"L1Regularizer {name!r}", "reg_regims", reg_regims)
        super().__init__(name, model, regims, threshold_criteria)

    def penalty(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """``strength * sum(|param|)``."""
        return param.abs().sum() * self.reg_regims[param_name]

    def threshold(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Dict[str, ParameterMasker]) -> None:
        """Set a regularization mask keeping the elements above the weight's strength."""
        if self.threshold_criteria is None or param_name not in self.reg_regims:
            return
        masker = zeros_mask_dict[param_name]
        masker.mask = threshold_mask(param, self.reg_regims[param_name])
        masker.is_regularization_mask = True
