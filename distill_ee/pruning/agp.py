"""Automated Gradual Pruning (AGP): the sparsity target follows a cubic schedule over the policy's epochs.

Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression",
2017. With ``s_i``/``s_f`` the initial/final sparsity, ``t0`` the policy's starting epoch and ``n`` its
frequency, the target at epoch ``t`` is::

    span   = ((ending_epoch - t0 - 1) // n) * n        # the last pruning epoch is t0 + span
    target = s_f + (s_i - s_f) * (1 - (t - t0) / span) ** 3

exactly as Distiller's ``AutomatedGradualPrunerBase.compute_target_sparsity``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

import torch

from ..arguments import Fraction, ParamNames
from ..errors import ScheduleError
from ..registry import PRUNERS
from .level import level_mask
from .masks import ParameterMasker
from .pruner import Pruner, check_fraction, check_weights
from .random import BernoulliFilterPruner
from .ranked import (
    L1RankedStructureParameterPruner,
    L2RankedStructureParameterPruner,
    RankedStructurePruner,
    check_group_type,
)

#: the group types of Distiller's filter-ranking AGP pruners (Bernoulli, activation ranked)
FILTER_GROUP_TYPES = ("Filters", "3D")


def agp_target_sparsity(
    initial_sparsity: float,
    final_sparsity: float,
    current_epoch: int,
    starting_epoch: int,
    ending_epoch: int,
    frequency: Optional[int] = 1,
) -> float:
    """The AGP sparsity target at ``current_epoch`` (a frequency of None counts as 1)."""
    freq = frequency or 1
    span = ((ending_epoch - starting_epoch - 1) // freq) * freq
    if span <= 0:
        raise ScheduleError(
            "AGP needs at least two pruning epochs: ending_epoch - starting_epoch must exceed the frequency "
            f"(got starting_epoch={starting_epoch}, ending_epoch={ending_epoch}, frequency={frequency})"
        )
    progress = min(max((current_epoch - starting_epoch) / span, 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


class AutomatedGradualPrunerBase(Pruner):
    """Prunes to the AGP target of the current epoch; subclasses say how a target becomes a mask."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float):
        super().__init__(name)
        owner = f"{type(self).__name__} {name!r}"
        self.initial_sparsity = check_fraction(owner, "initial_sparsity", initial_sparsity)
        self.final_sparsity = check_fraction(owner, "final_sparsity", final_sparsity)
        if self.final_sparsity <= self.initial_sparsity:
            raise ScheduleError(f"{owner}: final_sparsity must be greater than initial_sparsity", path="final_sparsity")

    def validate_window(self, starting_epoch: int, ending_epoch: Optional[int], frequency: Optional[int]) -> None:
        """Raise ScheduleError unless the policy window leaves AGP at least two pruning epochs."""
        self.compute_target_sparsity({"current_epoch": starting_epoch, "starting_epoch": starting_epoch,
                                      "ending_epoch": ending_epoch, "frequency": frequency})

    def compute_target_sparsity(self, meta: Dict[str, Any]) -> float:
        """The target sparsity for the epoch and schedule in ``meta``."""
        if meta.get("starting_epoch") is None or meta.get("ending_epoch") is None:
            raise ScheduleError(f"{self!r}: an AGP pruner needs a policy with starting_epoch and ending_epoch")
        return agp_target_sparsity(
            self.initial_sparsity,
            self.final_sparsity,
            meta["current_epoch"],
            meta["starting_epoch"],
            meta["ending_epoch"],
            meta.get("frequency"),
        )

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Mask ``param`` to the current AGP target."""
        if not self.handles(param_name):
            return
        target = self.compute_target_sparsity(meta)
        self.set_param_mask_by_sparsity_target(param, param_name, zeros_mask_dict, target, meta.get("model"))

    def set_param_mask_by_sparsity_target(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        target_sparsity: float,
        model: Optional[torch.nn.Module] = None,
    ) -> None:
        """Mask ``param`` to ``target_sparsity``."""
        raise NotImplementedError


@PRUNERS.register()
class AutomatedGradualPruner(AutomatedGradualPrunerBase):
    """Element-wise AGP: prunes the smallest-magnitude elements of each named weight to the target."""

    def __init__(self, name: str, initial_sparsity: Fraction, final_sparsity: Fraction, weights: ParamNames):
        super().__init__(name, initial_sparsity, final_sparsity)
        self.params_names = check_weights(f"AutomatedGradualPruner {name!r}", weights)

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` is one of the pruner's ``weights``."""
        return param_name in self.params_names

    def set_param_mask_by_sparsity_target(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        target_sparsity: float,
        model: Optional[torch.nn.Module] = None,
    ) -> None:
        """Mask the smallest elements of ``param`` so that it reaches ``target_sparsity``."""
        zeros_mask_dict[param_name].mask = level_mask(param, target_sparsity)


class StructuredAGP(AutomatedGradualPrunerBase):
    """Structure AGP: a ranked structure pruner prunes whole groups to the AGP target."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, pruner: RankedStructurePruner):
        super().__init__(name, initial_sparsity, final_sparsity)
        self.pruner = pruner

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` is one of the pruner's ``weights``."""
        return self.pruner.handles(param_name)

    def set_param_mask_by_sparsity_target(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        target_sparsity: float,
        model: Optional[torch.nn.Module] = None,
    ) -> None:
        """Prune the ``target_sparsity`` fraction of the groups of ``param``."""
        self.pruner.prune_to_target_sparsity(param, param_name, zeros_mask_dict, target_sparsity, model)

    def state_dict(self) -> Dict[str, Any]:
        """The state of the inner ranked pruner."""
        return self.pruner.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the inner ranked pruner."""
        self.pruner.load_state_dict(state)


class RankedAGP(StructuredAGP):
    """Structure AGP whose ranked pruner, of class ``ranked``, is built from the schedule's arguments."""

    ranked: Type[RankedStructurePruner]

    def __init__(
        self,
        name: str,
        initial_sparsity: Fraction,
        final_sparsity: Fraction,
        group_type: str,
        weights: ParamNames,
        group_dependency: Optional[str] = None,
        kwargs: Optional[Dict[str, Any]] = None,
    ):
        pruner = self.ranked(name, group_type, 0, weights, group_dependency, kwargs)
        super().__init__(name, initial_sparsity, final_sparsity, pruner)


@PRUNERS.register()
class L1RankedStructureParameterPruner_AGP(RankedAGP):
    """AGP over groups ranked by mean absolute value."""

    ranked = L1RankedStructureParameterPruner


@PRUNERS.register()
class L2RankedStructureParameterPruner_AGP(RankedAGP):
    """AGP over groups ranked by size-normalised L2 norm."""

    ranked = L2RankedStructureParameterPruner


@PRUNERS.register()
class BernoulliFilterPruner_AGP(StructuredAGP):
    """AGP over random filter dropping: each filter is dropped with the current AGP target as probability.

    Distiller's ``BernoulliFilterPruner_AGP``: every pruning step draws a fresh Bernoulli keep/drop per filter
    from PyTorch's global generator (reproducible under ``torch.manual_seed``) and scales the kept filters by
    ``n_filters / n_kept``, as ``BernoulliFilterPruner`` does.
    """

    def __init__(
        self,
        name: str,
        initial_sparsity: Fraction,
        final_sparsity: Fraction,
        group_type: str,
        weights: ParamNames,
        group_dependency: Optional[str] = None,
    ):
        check_group_type(f"BernoulliFilterPruner_AGP {name!r}", group_type, FILTER_GROUP_TYPES)
        pruner = BernoulliFilterPruner(name, group_type, 0, weights, group_dependency)
        super().__init__(name, initial_sparsity, final_sparsity, pruner)
