"""Pruners given one value per weight name (``'*'``: any other weight) that mask each weight by its value."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from .masks import ParameterMasker
from .pruner import Pruner, per_weight_value


class PerWeightPruner(Pruner):
    """Masks each weight by its own value or the ``'*'`` default; subclasses give ``values`` and ``mask_of``."""

    def values(self) -> Mapping[str, float]:
        """The value of each weight name (``'*'``: any other weight)."""
        raise NotImplementedError

    def mask_of(self, param: torch.Tensor, param_name: str, value: float) -> Optional[torch.Tensor]:
        """The mask of ``param`` for its ``value``; None leaves its mask as it is."""
        raise NotImplementedError

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` has a value of its own or there is a ``'*'`` default."""
        return per_weight_value(self.values(), param_name) is not None

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Mask ``param`` by its value; a weight without one is left alone."""
        value = per_weight_value(self.values(), param_name)
        if value is None:
            return
        mask = self.mask_of(param, param_name, value)
        if mask is not None:
            zeros_mask_dict[param_name].mask = mask
