"""Group Lasso: penalises whole groups of elements to zero them together (Distiller's GroupLassoRegularizer).

For a weight with strength ``s`` split into groups ``g``, the penalty is ``s * sum_g sqrt(sum(g**2) + eps)``
(Yuan and Lin, 2006); for ``4D`` (the whole tensor as one group) it is ``s * ||w||_2``. Group types, in
PyTorch layout: ``2D`` (kernels), ``Rows`` and ``Cols`` of a 2D weight, ``Channels`` (input channels),
``3D``/``Filters`` (output filters), ``4D``, and the sums ``Rows+Cols`` and ``Channels+4D``.

Thresholding (with ``threshold_criteria`` ``Mean_Abs`` or ``Max``) zeroes each group whose mean absolute
value (or largest magnitude) is at most the strength.

Group variance (Distiller's GroupVarianceRegularizer; Torfi et al., 2018, "Attention-Based Guided Structured
Sparsity"): for input channels ``c`` with norms ``n_c = sqrt(sum(w[:, c]**2) + eps)``, the penalty is
``s / var(n)`` (the unbiased variance), which pushes the channel norms apart so that group lasso can zero the
weak ones.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ..arguments import ParamMap
from ..errors import ScheduleError
from ..pruning.masks import ParameterMasker
from ..pruning.pruner import check_number
from ..pruning.structure import check_group_shape, expand_group_map, group_matrix
from ..registry import REGULARIZERS
from .regularizer import EPSILON, Regularizer

#: group type in reg_regims -> the structures (see pruning/structure.py) it penalises
GROUP_LASSO_TYPES: Dict[str, Tuple[str, ...]] = {
    "2D": ("2D",),
    "Rows": ("Rows",),
    "Cols": ("Cols",),
    "Rows+Cols": ("Rows", "Cols"),
    "Cols+Rows": ("Cols", "Rows"),
    "Channels": ("Channels",),
    "3D": ("Filters",),
    "Filters": ("Filters",),
    "4D": ("4D",),
    "Channels+4D": ("Channels", "4D"),
    "4D+Channels": ("4D", "Channels"),
}
#: the group types GroupVarianceRegularizer takes (Distiller's: input channels only)
GROUP_VARIANCE_TYPES: Dict[str, Tuple[str, ...]] = {"Channels": ("Channels",)}


def group_lasso_penalty(param: torch.Tensor, structure: str, strength: float) -> torch.Tensor:
    """``strength`` times the sum of the L2 norms of the groups of ``param``."""
    if structure == "4D":
        return param.norm(p=2) * strength
    groups = group_matrix(param, structure)
    return groups.pow(2).sum(dim=1).add(EPSILON).sqrt().sum() * strength


@torch.no_grad()
def group_threshold_mask(
    param: torch.Tensor, structure: str, threshold: float, criterion: str
) -> Optional[torch.Tensor]:
    """Mask zeroing the groups whose criterion value is at most ``threshold``; None when all are kept."""
    magnitudes = group_matrix(param.detach(), structure).abs()
    values = magnitudes.mean(dim=1) if criterion == "Mean_Abs" else magnitudes.max(dim=1).values
    keep = values > threshold
    if bool(keep.all()):
        return None
    return expand_group_map(param, structure, keep)


@REGULARIZERS.register()
class GroupLassoRegularizer(Regularizer):
    """Group Lasso penalty; ``reg_regims`` maps weight names to ``[strength, group_type]``."""

    def __init__(
        self,
        name: str,
        model: Optional[nn.Module],
        reg_regims: ParamMap[Any],
        threshold_criteria: Optional[str] = None,
    ):
        regims = check_regims(f"GroupLassoRegularizer {name!r}", reg_regims, model)
        super().__init__(name, model, regims, threshold_criteria)

    def structures(self, param_name: str) -> Tuple[float, Tuple[str, ...]]:
        """The strength and the structures penalised for ``param_name``."""
        strength, group_type = self.reg_regims[param_name]
        return strength, GROUP_LASSO_TYPES[group_type]

    def penalty(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """The group-lasso penalty of ``param`` over each of its structures."""
        strength, structures = self.structures(param_name)
        return sum(group_lasso_penalty(param, structure, strength) for structure in structures)

    def threshold(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Dict[str, ParameterMasker]) -> None:
        """Set a regularization mask zeroing the weak groups of ``param`` (nothing when none is weak)."""
        if self.threshold_criteria is None or param_name not in self.reg_regims:
            return
        strength, structures = self.structures(param_name)
        mask = None
        for structure in structures:
            part = group_threshold_mask(param, structure, strength, self.threshold_criteria)
            if part is not None:
                mask = part if mask is None else mask * part
        if mask is not None:
            zeros_mask_dict[param_name].mask = mask
            zeros_mask_dict[param_name].is_regularization_mask = True


def group_norms(param: torch.Tensor, structure: str) -> torch.Tensor:
    """The L2 norm of each group of ``param``, ``sqrt(sum(g**2) + eps)``."""
    return group_matrix(param, structure).pow(2).sum(dim=1).add(EPSILON).sqrt()


@REGULARIZERS.register()
class GroupVarianceRegularizer(Regularizer):
    """Group variance penalty ``strength / var(channel norms)``; ``reg_regims`` maps weight names to
    ``[strength, Channels]``.

    As in Distiller, the input channels are the only group type, there is no thresholding (pair it with a
    GroupLassoRegularizer that thresholds), and the variance is the unbiased one, so a weight needs at least two
    input channels; channels whose norms are all equal give an infinite penalty, as Distiller's formula does.
    """

    def __init__(self, name: str, model: Optional[nn.Module], reg_regims: ParamMap[Any]):
        owner = f"GroupVarianceRegularizer {name!r}"
        regims = check_regims(owner, reg_regims, model, GROUP_VARIANCE_TYPES)
        params = dict(model.named_parameters()) if model is not None else {}
        for param_name in regims:
            if param_name in params and params[param_name].size(1) < 2:
                raise ScheduleError(f"{owner}: reg_regims[{param_name!r}]: the variance of the channel norms needs "
                                    f"at least 2 input channels; weight has shape "
                                    f"{tuple(params[param_name].shape)}", path="reg_regims")
        super().__init__(name, model, regims)

    def penalty(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """``strength / var(n)`` over the L2 norms ``n`` of the input channels of ``param``."""
        strength, _ = self.reg_regims[param_name]
        return strength * (1 / group_norms(param, "Channels").var())

    def threshold(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Dict[str, ParameterMasker]) -> None:
        """Nothing: group variance does not threshold (Distiller's neither)."""


def check_regims(owner: str, reg_regims: Any, model: Optional[nn.Module],
                 types: Mapping[str, Tuple[str, ...]] = GROUP_LASSO_TYPES) -> Dict[str, Tuple[float, str]]:
    """``{weight: (strength, group_type)}`` after checking types (one of ``types``) and, when a model is
    given, shapes."""
    if not isinstance(reg_regims, Mapping) or not reg_regims:
        raise ScheduleError(f"{owner}: 'reg_regims' must map weight names to [strength, group_type]", path="reg_regims")
    params = dict(model.named_parameters()) if model is not None else {}
    out: Dict[str, Tuple[float, str]] = {}
    for param_name, regim in reg_regims.items():
        where = f"{owner}: reg_regims[{param_name!r}]"
        if not isinstance(regim, (list, tuple)) or len(regim) != 2:
            raise ScheduleError(f"{where} must be [strength, group_type], got {regim!r}", path="reg_regims")
        strength = check_number(owner, f"reg_regims[{param_name!r}][0]", regim[0])
        group_type = regim[1]
        if not isinstance(group_type, str) or group_type not in types:
            raise ScheduleError(f"{where}: unknown group type {group_type!r}", path="reg_regims", valid=list(types))
        if param_name in params:
            for structure in types[group_type]:
                try:
                    check_group_shape(params[param_name], structure, param_name)
                except ScheduleError as exc:
                    raise ScheduleError(f"{where}: {exc.message}", path="reg_regims") from None
        out[str(param_name)] = (strength, group_type)
    return out
