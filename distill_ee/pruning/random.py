"""Randomised structure pruners: random filter dropping and a random level with magnitude ranking.

Both draw from PyTorch's global generator, so ``torch.manual_seed`` makes them reproducible.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from ..arguments import Fraction, ParamNames
from ..errors import ScheduleError
from ..registry import PRUNERS
from .pruner import check_fraction
from .ranked import GROUP_KWARGS, RANKED_GROUP_TYPES, L1RankedStructureParameterPruner, RankedStructurePruner
from .structure import group_matrix


@PRUNERS.register()
class BernoulliFilterPruner(RankedStructurePruner):
    """Drops each group independently with probability ``desired_sparsity`` (DropFilter-style).

    As in Distiller the kept groups are scaled by ``n_groups / n_kept`` to compensate for the dropped
    ones, so the mask is not 0/1: use it as Distiller does, with a policy that sets
    ``use_double_copies``, ``mask_on_forward_only`` and ``discard_masks_at_minibatch_end`` so the
    scaling only affects the forward pass and never accumulates in the weights.
    """

    group_types = tuple(g for g in RANKED_GROUP_TYPES if g not in GROUP_KWARGS)

    def __init__(
        self,
        name: str,
        group_type: str,
        desired_sparsity: Fraction,
        weights: ParamNames,
        group_dependency: Optional[str] = None,
    ):
        super().__init__(name, group_type, desired_sparsity, weights, group_dependency)

    def group_keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> Optional[torch.Tensor]:
        """A Bernoulli draw per group, 1 (keep) with probability ``1 - fraction``."""
        n_groups = group_matrix(param, self.tensor_group_type, param_name).size(0)
        keep_prob = torch.full((n_groups,), 1.0 - fraction)
        return torch.bernoulli(keep_prob).to(dtype=param.dtype, device=param.device)

    def keep_map_to_mask(self, param: torch.Tensor, keep_map: torch.Tensor) -> torch.Tensor:
        """The group mask scaled by ``n_groups / n_kept``."""
        kept_fraction = keep_map.sum().clamp(min=1.0) / keep_map.numel()
        return super().keep_map_to_mask(param, keep_map) / kept_fraction


@PRUNERS.register()
class RandomLevelStructureParameterPruner(L1RankedStructureParameterPruner):
    """Prunes a random fraction, drawn uniformly from ``sparsity_range`` at each call, of the lowest-L1 groups."""

    def __init__(
        self,
        name: str,
        group_type: str,
        sparsity_range: Sequence[float],
        weights: ParamNames,
        group_dependency: Optional[str] = None,
        kwargs: Optional[Dict[str, Any]] = None,
    ):
        owner = f"RandomLevelStructureParameterPruner {name!r}"
        if not isinstance(sparsity_range, (list, tuple)) or len(sparsity_range) != 2:
            raise ScheduleError(
                f"{owner}: 'sparsity_range' must be a pair [low, high], got {sparsity_range!r}", path="sparsity_range"
            )
        low = check_fraction(owner, "sparsity_range[0]", sparsity_range[0])
        high = check_fraction(owner, "sparsity_range[1]", sparsity_range[1])
        if low > high:
            raise ScheduleError(f"{owner}: sparsity_range must be [low, high] with low <= high", path="sparsity_range")
        self.sparsity_range = (low, high)
        super().__init__(name, group_type, 0, weights, group_dependency, kwargs)

    def fraction_to_prune(self, param_name: str) -> float:
        """A fresh uniform draw from ``sparsity_range``."""
        low, high = self.sparsity_range
        return low + (high - low) * torch.rand(()).item()
