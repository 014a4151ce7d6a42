"""Pruning sensitivity analysis (Distiller's ``perform_sensitivity_analysis``).

For each weight and each sparsity level, a copy of the model has only that weight pruned to that level and
is evaluated; the accuracy drop shows how sensitive the network is to pruning the weight. Groups:

* ``element``: the smallest-magnitude elements (SparsityLevelParameterPruner);
* ``filter``: the L1-weakest filters / output rows (L1RankedStructureParameterPruner, ``Filters``);
* ``channel``: the L1-weakest input channels / input features (L1RankedStructureParameterPruner, ``Channels``).

Only weights with 2 or 4 dimensions (linear and 2-D convolution weights) are analysed, as in Distiller.
Results: ``{param name: {sparsity: (top1, top5, loss)}}`` (the sample app writes them as CSV and a plot).
"""
from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .modules import strip_module_prefix
from .errors import ConfigError
from .pruning.level import level_mask
from .pruning.masks import ParameterMasker
from .pruning.ranked import L1RankedStructureParameterPruner
from .registry import suggest

log = logging.getLogger(__name__)

GROUPS = ("element", "filter", "channel")

Metrics = Tuple[float, float, float]
TestFunc = Callable[[nn.Module], Metrics]
Sensitivities = Dict[str, Dict[float, Metrics]]


def perform_sensitivity_analysis(model: nn.Module, net_params: Optional[Iterable[str]], sparsities: Sequence[float],
                                 test_func: TestFunc, group: str) -> Sensitivities:
    """Evaluate a copy of ``model`` with each weight of ``net_params`` pruned alone to each sparsity level.

    ``test_func(model) -> (top1, top5, loss)``; ``net_params`` None means every weight; ``model`` is unchanged.
    """
    _check_group(group)
    levels = _check_levels(sparsities)
    model_copy = copy.deepcopy(model)
    params = dict(model_copy.named_parameters())
    sensitivities: Sensitivities = OrderedDict()
    for name in _weights(params, net_params):
        sensitivities[name] = _analyse_weight(model_copy, params[name], name, levels, test_func, group)
    return sensitivities


def _analyse_weight(model: nn.Module, param: nn.Parameter, name: str, levels: List[float], test_func: TestFunc,
                    group: str) -> Dict[float, Metrics]:
    original = param.detach().clone()
    results: Dict[float, Metrics] = OrderedDict()
    try:
        for level in levels:
            log.info("Sensitivity of %s to %s pruning at %.1f%% sparsity", name, group, 100 * level)
            with torch.no_grad():
                param.copy_(original * sensitivity_mask(original, name, level, group))
            top1, top5, loss = test_func(model)
            results[level] = (float(top1), float(top5), float(loss))
    finally:
        with torch.no_grad():
            param.copy_(original)
    return results


def sensitivity_mask(weight: torch.Tensor, name: str, level: float, group: str) -> torch.Tensor:
    """The mask that prunes ``weight`` to ``level`` the way ``group`` says (all ones when nothing goes)."""
    if group == "element":
        return level_mask(weight, level)
    group_type = "Filters" if group == "filter" else "Channels"
    pruner = L1RankedStructureParameterPruner("sensitivity", group_type, level, [name])
    masks = {name: ParameterMasker(name)}
    pruner.set_param_mask(weight, name, masks, {})
    return masks[name].mask if masks[name].mask is not None else torch.ones_like(weight)


# --------------------------------------------------------------------------- argument checks
def _check_group(group: str) -> None:
    if group not in GROUPS:
        hint = suggest(str(group), GROUPS)
        raise ConfigError(f"unknown sensitivity group {group!r}"
                          + (f"; did you mean {hint[0]!r}?" if hint else "") + f" (valid: {', '.join(GROUPS)})")


def _check_levels(sparsities: Sequence[float]) -> List[float]:
    levels = [float(s) for s in sparsities]
    if not levels:
        raise ConfigError("the sensitivity analysis needs at least one sparsity level")
    bad = [s for s in levels if not 0.0 <= s <= 1.0]
    if bad:
        raise ConfigError(f"sparsity levels must be between 0 and 1, got {bad[0]}")
    return levels


def _weights(params: Dict[str, nn.Parameter], names: Optional[Iterable[str]]) -> List[str]:
    """The analysed weights: the named ones (``module.`` prefixes tolerated), 2-D and 4-D only."""
    if names is None:
        return [n for n, p in params.items() if p.dim() in (2, 4)]
    chosen = []
    for name in names:
        bare = name if name in params else strip_module_prefix(name)
        if bare not in params:
            hint = suggest(bare, params)
            raise ConfigError(f"no parameter named {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if params[bare].dim() in (2, 4):
            chosen.append(bare)
        else:
            log.info("Sensitivity: skipping %s (shape %s): only 2-D and 4-D weights are analysed",
                     bare, tuple(params[bare].shape))
    return chosen
