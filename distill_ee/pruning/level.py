"""Pruning to an exact sparsity level per weight (Distiller's SparsityLevelParameterPruner)."""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from ..arguments import ParamMap, UnitInterval
from ..registry import PRUNERS
from .magnitude import threshold_mask
from .per_weight import PerWeightPruner
from .pruner import check_fraction_map, num_to_prune


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
class SparsityLevelParameterPruner(PerWeightPruner):
    """Prunes each named weight to the sparsity level given for it (``'*'``: any other weight)."""

    def __init__(self, name: str, levels: ParamMap[UnitInterval]):
        super().__init__(name)
        self.levels = check_fraction_map(f"SparsityLevelParameterPruner {name!r}", "levels", levels)

    def values(self) -> Mapping[str, float]:
        """The sparsity level of each weight."""
        return self.levels

    def mask_of(self, param: torch.Tensor, param_name: str, value: float) -> Optional[torch.Tensor]:
        """Mask the smallest elements of ``param`` so that it reaches its level (a level of 0 sets nothing)."""
        return level_mask(param, value) if value else None
