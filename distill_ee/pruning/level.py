"""Pruning to an exact sparsity level per weight (Distiller's SparsityLevelParameterPruner)."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..arguments import ParamMap, UnitInterval
from ..registry import PRUNERS
from .magnitude import threshold_mask
from .masks import ParameterMasker
from .pruner import Pruner, check_fraction_map, num_to_prune, per_weight_value


@torch.no_grad()
def level_mask(param: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask removing the ``floor(sparsity * numel)`` smallest-magnitude elements of ``param``.

    As in Distiller the cut is a magnitude threshold, so elements tied with the largest pruned one
    are pruned too (this only matters for repeated values such as already-zeroed weights).
    """
    k = num_to_prune(param.numel(), sparsity)
    if k == 0:
        return torch.ones_like(param)
    kth = torch.kthvalue(param.detach().abs().reshape(-1), k).values  # the k-th smallest magnitude
    return threshold_mask(param, kth.item())


@PRUNERS.register()
class SparsityLevelParameterPruner(Pruner):
    """Prunes each named weight to the sparsity level given for it (``'*'``: any other weight)."""

    def __init__(self, name: str, levels: ParamMap[UnitInterval]):
        super().__init__(name)
        self.levels = check_fraction_map(f"SparsityLevelParameterPruner {name!r}", "levels", levels)

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` has a level of its own or there is a ``'*'`` default."""
        return per_weight_value(self.levels, param_name) is not None

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Mask the smallest elements of ``param`` so that it reaches its level (a level of 0 sets nothing)."""
        level = per_weight_value(self.levels, param_name)
        if not level:
            return
        zeros_mask_dict[param_name].mask = level_mask(param, level)
