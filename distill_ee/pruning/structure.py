"""Structures (groups) of a weight tensor: views, magnitudes, ranking and masks.

Group types, in the PyTorch layout of the weight (conv ``[filters, channels, kh, kw]``, linear
``[out_features, in_features]``):

* ``Filters`` (alias ``3D``): one group per output filter / output neuron, ``w[i, ...]``;
* ``Channels``: one group per input channel / input feature, ``w[:, j, ...]``;
* ``Rows``: one group per row of a 2D weight, ``w[i, :]``;
* ``Cols``: one group per column of a 2D weight, ``w[:, j]``;
* ``2D``: one group per convolution kernel, ``w[i, j, :, :]``;
* ``4D``: the whole tensor as one group;
* ``Blocks``: blocks of a 4D weight shaped by ``block_shape`` ``[repetitions, depth, 1, 1]``, laid out as
  Distiller's ``rank_and_prune_blocks`` does: with ``depth`` 1, a block is ``repetitions`` consecutive filters
  at one (channel, kernel position); with ``depth`` > 1, it is ``repetitions * depth`` consecutive entries of
  the flattened ``[filters * channels]`` grid at one kernel position.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from ..errors import ScheduleError
from .pruner import num_to_prune

GROUP_ALIASES = {"3D": "Filters"}
#: group type -> (allowed numbers of dimensions, description used in error messages)
GROUP_SHAPES: Dict[str, Tuple[Tuple[int, ...], str]] = {
    "Filters": ((2, 3, 4, 5), "a weight with 2 to 5 dimensions"),
    "Channels": ((2, 3, 4, 5), "a weight with 2 to 5 dimensions"),
    "Rows": ((2,), "a 2D weight"),
    "Cols": ((2,), "a 2D weight"),
    "2D": ((4,), "a 4D convolution weight"),
    "4D": ((1, 2, 3, 4, 5), "a weight tensor"),
    "Blocks": ((4,), "a 4D convolution weight"),
}
GROUP_TYPES = sorted(GROUP_SHAPES) + sorted(GROUP_ALIASES)


def canonical_group_type(group_type: str) -> str:
    """``group_type`` with aliases resolved; raises ScheduleError when unknown."""
    group_type = GROUP_ALIASES.get(group_type, group_type)
    if group_type not in GROUP_SHAPES:
        raise ScheduleError(f"unknown group type {group_type!r}", valid=GROUP_TYPES)
    return group_type


def check_group_shape(param: torch.Tensor, group_type: str, param_name: str = "") -> str:
    """The canonical group type after checking that ``param`` has a shape it applies to."""
    group_type = canonical_group_type(group_type)
    dims, what = GROUP_SHAPES[group_type]
    if param.dim() not in dims:
        name = f"{param_name!r} " if param_name else ""
        raise ScheduleError(
            f"group type {group_type!r} needs {what}; weight {name}has shape {tuple(param.shape)}"
        )
    return group_type


def block_view_shape(param: torch.Tensor, block_shape: Sequence[int], param_name: str = "") -> Tuple[int, int, int]:
    """Distiller's ``[n_super_rows, block_volume, n_positions]`` view of a 4D ``param`` for ``block_shape``."""
    repetitions, depth = int(block_shape[0]), int(block_shape[1])
    filters, channels = param.size(0), param.size(1)
    kernel = param.size(2) * param.size(3)
    if depth > 1:
        rows, volume, positions, what = filters * channels, repetitions * depth, kernel, "filters * channels"
    else:
        rows, volume, positions, what = filters, repetitions, channels * kernel, "filters"
    if rows % volume:
        name = f"{param_name!r} " if param_name else ""
        raise ScheduleError(
            f"block_shape {list(block_shape)} needs {what} ({rows}) divisible by {volume}; "
            f"weight {name}has shape {tuple(param.shape)}",
            path="kwargs.block_shape",
        )
    return rows // volume, volume, positions


def group_matrix(
    param: torch.Tensor, group_type: str, param_name: str = "", block_shape: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """``param`` viewed as ``[n_groups, group_size]``, one row per group (``Blocks`` needs ``block_shape``)."""
    group_type = check_group_shape(param, group_type, param_name)
    if group_type == "Blocks":
        super_rows, volume, positions = block_view_shape(param, _need_block_shape(block_shape), param_name)
        return param.reshape(super_rows, volume, positions).permute(0, 2, 1).reshape(-1, volume)
    if group_type == "Filters":
        return param.reshape(param.size(0), -1)
    if group_type == "Channels":
        return param.transpose(0, 1).reshape(param.size(1), -1)
    if group_type == "Rows":
        return param
    if group_type == "Cols":
        return param.t()
    if group_type == "2D":
        return param.reshape(param.size(0) * param.size(1), -1)
    return param.reshape(1, -1)


def expand_group_map(
    param: torch.Tensor, group_type: str, group_map: torch.Tensor, block_shape: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """A tensor shaped like ``param`` holding each group's value of ``group_map`` on all its elements."""
    group_type = check_group_shape(param, group_type)
    ones = [1] * param.dim()
    if group_type == "Blocks":
        super_rows, volume, positions = block_view_shape(param, _need_block_shape(block_shape))
        expanded = group_map.reshape(super_rows, 1, positions).expand(super_rows, volume, positions)
        return expanded.reshape(param.shape).to(dtype=param.dtype, device=param.device).contiguous()
    if group_type in ("Filters", "Rows"):
        shape = [-1] + ones[1:]
    elif group_type in ("Channels", "Cols"):
        shape = [1, -1] + ones[2:]
    elif group_type == "2D":
        shape = [param.size(0), param.size(1), 1, 1]
    else:
        shape = ones
    expanded = group_map.reshape(shape).expand(param.shape)
    return expanded.to(dtype=param.dtype, device=param.device).contiguous()


def _need_block_shape(block_shape: Optional[Sequence[int]]) -> Sequence[int]:
    if block_shape is None:
        raise ScheduleError("group type 'Blocks' needs kwargs.block_shape", path="kwargs")
    return block_shape


def l1_magnitudes(groups: torch.Tensor) -> torch.Tensor:
    """Mean absolute value of each row of ``groups`` (L1 norm normalised by the group size)."""
    return groups.abs().sum(dim=1) / groups.size(1)


def l2_magnitudes(groups: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of ``groups`` normalised by the group size."""
    return groups.norm(p=2, dim=1) / groups.size(1)


MAGNITUDES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"L1": l1_magnitudes, "L2": l2_magnitudes}


def num_groups_to_prune(n_groups: int, fraction: float) -> int:
    """``floor(fraction * n_groups)``, never every group unless ``fraction`` is 1 (as in Distiller)."""
    k = num_to_prune(n_groups, fraction)
    if k == n_groups and fraction != 1.0:
        k = n_groups - 1
    return k


@torch.no_grad()
def rank_keep_map(
    param: torch.Tensor,
    group_type: str,
    fraction: float,
    magnitude: str = "L1",
    param_name: str = "",
    block_shape: Optional[Sequence[int]] = None,
) -> Optional[torch.Tensor]:
    """1-per-group map keeping all but the ``fraction`` lowest-magnitude groups; None if none would go.

    As in Distiller the cut is the magnitude of the largest pruned group, so a group tied with it
    (e.g. another all-zero group) is pruned too.
    """
    groups = group_matrix(param.detach(), group_type, param_name, block_shape)
    k = num_groups_to_prune(groups.size(0), fraction)
    if k == 0:
        return None
    mags = MAGNITUDES[magnitude](groups)
    bottomk, _ = torch.topk(mags, k, largest=False, sorted=True)
    return (mags > bottomk[-1]).to(param.dtype)
