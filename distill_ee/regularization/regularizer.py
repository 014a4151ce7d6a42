"""Regularizer base class (Distiller's ``_Regularizer``)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ScheduleError
from ..pruning.masks import ParameterMasker

#: how a group is compared with the threshold: by its mean absolute value or its largest magnitude
THRESHOLD_CRITERIA = (None, "Mean_Abs", "Max")
#: added under square roots so that the gradient of an all-zero group stays finite
EPSILON = 1e-8


class Regularizer:
    """Adds a penalty on the weights named in ``reg_regims`` and, optionally, thresholds them.

    ``loss`` returns ``regularizer_loss`` plus this weight's penalty (use the returned tensor).
    ``threshold`` sets a one-shot regularization mask on the weight when ``threshold_criteria`` is set.
    """

    def __init__(
        self,
        name: str,
        model: Optional[nn.Module],
        reg_regims: Dict[str, Any],
        threshold_criteria: Optional[str] = None,
    ):
        if threshold_criteria not in THRESHOLD_CRITERIA:
            raise ScheduleError(
                f"{type(self).__name__} {name!r}: unknown threshold_criteria {threshold_criteria!r}",
                path="threshold_criteria",
                valid=[c for c in THRESHOLD_CRITERIA if c],
            )
        self.name = name
        self.model = model
        self.reg_regims = reg_regims
        self.threshold_criteria = threshold_criteria

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` is regularized."""
        return param_name in self.reg_regims

    def loss(
        self,
        param: torch.Tensor,
        param_name: str,
        regularizer_loss: torch.Tensor,
        zeros_mask_dict: Dict[str, ParameterMasker],
    ) -> torch.Tensor:
        """``regularizer_loss`` plus the penalty of ``param`` (unchanged for a weight not regularized)."""
        if param_name not in self.reg_regims:
            return regularizer_loss
        return regularizer_loss + self.penalty(param, param_name)

    def penalty(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """The penalty term of one regularized weight."""
        raise NotImplementedError

    def threshold(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Dict[str, ParameterMasker]) -> None:
        """Set a regularization mask on ``param`` when thresholding is configured."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
