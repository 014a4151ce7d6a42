"""Structure pruners that rank groups (filters, channels, rows ...) by their L1 or L2 magnitude.

Distiller's ``L1RankedStructureParameterPruner`` and ``L2RankedStructureParameterPruner``: prune the
``desired_sparsity`` fraction of groups with the smallest mean L1 (or normalised L2) magnitude.

Group types: ``Filters``/``3D``, ``Channels``, ``2D`` (kernels), ``Rows`` and ``Blocks``. As in Distiller,
``Rows`` ranks the rows of the *transposed* 2D weight, i.e. the columns of PyTorch's ``[out, in]`` weight, so
that it removes input features the way ``Channels`` removes input channels of a convolution. ``Blocks`` ranks
the blocks of a 4D weight given by ``kwargs: {block_shape: [repetitions, depth, 1, 1]}`` (see structure.py).

``group_dependency: Leader`` makes every named weight use the groups chosen for the first one (the
leader), e.g. to prune the same channels of weights whose outputs are added together.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from ..arguments import Fraction, ParamNames
from ..errors import ScheduleError
from ..registry import PRUNERS, suggest
from .masks import ParameterMasker
from .pruner import Pruner, check_fraction, check_weights
from .structure import expand_group_map, rank_keep_map

#: group type named in a schedule -> group type of the weight tensor that is ranked (see structure.py)
RANKED_GROUP_TYPES = {"Filters": "Filters", "3D": "Filters", "Channels": "Channels", "2D": "2D", "Rows": "Cols",
                      "Blocks": "Blocks"}
#: group type -> the ``kwargs`` it takes (all required); other group types take none
GROUP_KWARGS: Dict[str, Tuple[str, ...]] = {"Blocks": ("block_shape",)}
GROUP_DEPENDENCIES = ("Leader",)


class RankedStructurePruner(Pruner):
    """Base of pruners that keep or drop whole groups of the weights they name."""

    #: the group types (keys of ``RANKED_GROUP_TYPES``) this pruner accepts
    group_types: Tuple[str, ...] = tuple(RANKED_GROUP_TYPES)

    def __init__(
        self,
        name: str,
        group_type: str,
        desired_sparsity: Fraction,
        weights: ParamNames,
        group_dependency: Optional[str] = None,
        kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__(name)
        owner = f"{type(self).__name__} {name!r}"
        check_group_type(owner, group_type, self.group_types)
        if group_dependency is not None and group_dependency not in GROUP_DEPENDENCIES:
            raise ScheduleError(
                f"{owner}: unknown group_dependency {group_dependency!r}",
                path="group_dependency",
                valid=GROUP_DEPENDENCIES,
            )
        self.group_type = group_type
        self.tensor_group_type = RANKED_GROUP_TYPES[group_type]
        self.block_shape = check_group_kwargs(owner, group_type, kwargs).get("block_shape")
        self.desired_sparsity = check_fraction(owner, "desired_sparsity", desired_sparsity)
        self.params_names: List[str] = check_weights(owner, weights)
        self.group_dependency = group_dependency
        self.leader_binary_map: Optional[torch.Tensor] = None
        self.last_target_sparsity: Optional[float] = None

    def leader(self) -> str:
        """The weight whose groups all others follow under ``group_dependency: Leader``."""
        return self.params_names[0]

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` is one of the pruner's ``weights``."""
        return param_name in self.params_names

    def fraction_to_prune(self, param_name: str) -> float:
        """The fraction of groups to prune now."""
        return self.desired_sparsity

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Mask the groups of ``param`` chosen for the pruner's current fraction."""
        if not self.handles(param_name):
            return
        model = meta.get("model") if meta else None
        try:
            self.prune_to_target_sparsity(param, param_name, zeros_mask_dict, self.fraction_to_prune(param_name),
                                          model)
        except ScheduleError as err:  # name the group type as the schedule wrote it (Rows ranks 'Cols')
            raise ScheduleError(err.message.replace(repr(self.tensor_group_type), repr(self.group_type)),
                                path=err.path, valid=err.valid) from None

    def prune_to_target_sparsity(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        target_sparsity: float,
        model: Optional[torch.nn.Module] = None,
    ) -> None:
        """Mask the ``target_sparsity`` fraction of groups; a fraction too small to drop a group sets nothing."""
        if not self.handles(param_name) or target_sparsity == 0:
            return
        if self.group_dependency == "Leader":
            keep_map = self._leader_keep_map(target_sparsity, param, param_name, model)
        else:
            keep_map = self.group_keep_map(param, param_name, target_sparsity)
        if keep_map is not None:
            zeros_mask_dict[param_name].mask = self.keep_map_to_mask(param, keep_map)

    def _leader_keep_map(
        self, target_sparsity: float, param: torch.Tensor, param_name: str, model: Optional[torch.nn.Module]
    ) -> Optional[torch.Tensor]:
        # The leader's map is computed once per target: the calls for the other weights reuse it.
        if target_sparsity != self.last_target_sparsity or self.leader_binary_map is None:
            leader_param = param if param_name == self.leader() else self._leader_param(model)
            self.leader_binary_map = self.group_keep_map(leader_param, self.leader(), target_sparsity)
            self.last_target_sparsity = target_sparsity
        return self.leader_binary_map

    def _leader_param(self, model: Optional[torch.nn.Module]) -> torch.Tensor:
        params = dict(model.named_parameters()) if model is not None else {}
        if self.leader() not in params:
            raise ScheduleError(f"{self!r}: leader weight {self.leader()!r} is not a parameter of the model")
        return params[self.leader()]

    def group_keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> Optional[torch.Tensor]:
        """1 for each group to keep, 0 for each to prune; None when nothing is pruned."""
        raise NotImplementedError

    def keep_map_to_mask(self, param: torch.Tensor, keep_map: torch.Tensor) -> torch.Tensor:
        """The element mask of ``param`` for a per-group ``keep_map``."""
        return expand_group_map(param, self.tensor_group_type, keep_map, self.block_shape)

    def state_dict(self) -> Dict[str, Any]:
        """The cached leader map and the target it was computed for."""
        return {"leader_binary_map": self.leader_binary_map, "last_target_sparsity": self.last_target_sparsity}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the cached leader map."""
        self.leader_binary_map = state.get("leader_binary_map")
        self.last_target_sparsity = state.get("last_target_sparsity")


class LpRankedStructureParameterPruner(RankedStructurePruner):
    """Ranks groups by a magnitude (``L1`` or ``L2``, set by subclasses) and prunes the smallest."""

    magnitude = "L1"

    def group_keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> Optional[torch.Tensor]:
        """Keep all but the ``fraction`` lowest-magnitude groups of ``param``."""
        return rank_keep_map(param, self.tensor_group_type, fraction, self.magnitude, param_name, self.block_shape)


def check_group_type(owner: str, group_type: Any, allowed: Tuple[str, ...]) -> None:
    """Raise a ScheduleError, with close names, unless ``group_type`` is one of ``allowed``."""
    if group_type not in allowed:
        raise ScheduleError(f"{owner}: group_type {group_type!r} cannot be ranked", path="group_type",
                            suggestions=suggest(str(group_type), allowed), valid=sorted(allowed))


def check_group_kwargs(owner: str, group_type: str, kwargs: Any) -> Dict[str, Any]:
    """The checked ``kwargs`` of ``group_type`` (``GROUP_KWARGS``), or a ScheduleError naming the bad entry."""
    takes = GROUP_KWARGS.get(group_type, ())
    if not takes:
        if kwargs:
            users = " or ".join(repr(g) for g in sorted(GROUP_KWARGS))
            raise ScheduleError(f"{owner}: 'kwargs' is only used by group_type {users}", path="kwargs")
        return {}
    if not isinstance(kwargs, dict):
        raise ScheduleError(f"{owner}: group_type {group_type!r} needs kwargs with {', '.join(takes)}, "
                            f"got {kwargs!r}", path="kwargs")
    for key in kwargs:
        if key not in takes:
            raise ScheduleError(f"{owner}: unknown key {key!r} in kwargs of group_type {group_type!r}",
                                path=f"kwargs.{key}", suggestions=suggest(str(key), takes), valid=takes)
    for key in takes:
        if key not in kwargs:
            raise ScheduleError(f"{owner}: group_type {group_type!r} needs kwargs.{key}", path="kwargs")
    return {"block_shape": check_block_shape(owner, kwargs["block_shape"])}


def check_block_shape(owner: str, block_shape: Any) -> Tuple[int, int, int, int]:
    """``[repetitions, depth, 1, 1]`` of positive integers (Distiller's only supported block shape)."""
    ok = isinstance(block_shape, (list, tuple)) and len(block_shape) == 4 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in block_shape)
    if not ok:
        raise ScheduleError(f"{owner}: block_shape must be 4 positive integers [block_repetitions, block_depth, "
                            f"block_height, block_width], got {block_shape!r}", path="kwargs.block_shape")
    if block_shape[2] != 1 or block_shape[3] != 1:
        raise ScheduleError(f"{owner}: block_shape must be [block_repetitions, block_depth, 1, 1] (blocks one "
                            f"kernel element high and wide), got {list(block_shape)}", path="kwargs.block_shape")
    return tuple(block_shape)  # type: ignore[return-value]


@PRUNERS.register()
class L1RankedStructureParameterPruner(LpRankedStructureParameterPruner):
    """Prunes the ``desired_sparsity`` fraction of groups with the smallest mean absolute value."""

    magnitude = "L1"


@PRUNERS.register()
class L2RankedStructureParameterPruner(LpRankedStructureParameterPruner):
    """Prunes the ``desired_sparsity`` fraction of groups with the smallest (size-normalised) L2 norm."""

    magnitude = "L2"
