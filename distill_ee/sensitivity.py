"""Pruning sensitivity analysis (Distiller's ``perform_sensitivity_analysis``).

For each weight and each sparsity level, a copy of the model has only that weight pruned to that level and
is evaluated; the accuracy drop shows how sensitive the network is to pruning the weight. Groups:

* ``element``: the smallest-magnitude elements (SparsityLevelParameterPruner);
* ``filter``: the L1-weakest filters / output rows (L1RankedStructureParameterPruner, ``Filters``);
* ``channel``: the L1-weakest input channels / input features (L1RankedStructureParameterPruner, ``Channels``).

Only weights with 2 or 4 dimensions (linear and 2-D convolution weights) are analysed, as in Distiller.
Results: ``{param name: {sparsity: (top1, top5, loss)}}``, written as CSV (``parameter, sparsity, top1,
top5, loss``) and as a plot of top1 against sparsity, one line per weight.
"""
from __future__ import annotations

import copy
import csv
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .early_exit.attach import strip_module_prefix
from .errors import ConfigError
from .pruning.level import level_mask
from .pruning.masks import ParameterMasker
from .pruning.ranked import L1RankedStructureParameterPruner
from .registry import suggest

log = logging.getLogger(__name__)

GROUPS = ("element", "filter", "channel")
CSV_COLUMNS = ["parameter", "sparsity", "top1", "top5", "loss"]
CSV_NAME = "sensitivity.csv"
PNG_NAME = "sensitivity.png"

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


def sensitivity_levels(start: float, end: float, step: float) -> List[float]:
    """Sparsity levels ``start, start + step, ...`` below ``end`` (Distiller's ``--sense-range``)."""
    if step <= 0 or not 0.0 <= start < end <= 1.0:
        raise ConfigError(f"--sense-range needs 0 <= START < END <= 1 and STEP > 0, got {start} {end} {step}")
    return [round(float(v), 10) for v in np.arange(start, end, step)]


def sensitivities_to_csv(sensitivities: Sensitivities, path: Union[str, Path]) -> Path:
    """Write one row per (parameter, sparsity): ``parameter, sparsity, top1, top5, loss``."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for name, results in sensitivities.items():
            for level, metrics in results.items():
                writer.writerow([name, level, *metrics])
    return path


def sensitivities_to_png(sensitivities: Sensitivities, path: Union[str, Path]) -> Path:
    """Plot top1 against sparsity, one line per parameter (matplotlib's Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(10, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, results) in enumerate(sensitivities.items()):
        style = ("-", "--", ":", "-.")[(i // 10) % 4]  # the default palette repeats after ten colours
        ax.plot(list(results), [m[0] for m in results.values()], marker="o", linestyle=style, label=name)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top1")
    ax.set_title("Pruning sensitivity")
    ax.grid(True, alpha=0.3)
    if sensitivities:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def run_sensitivity(model: nn.Module, params: Optional[Iterable[str]], sparsities: Sequence[float], group: str,
                    test_func: TestFunc, out_dir: Union[str, Path]) -> Tuple[Path, Path]:
    """Run the analysis and write ``sensitivity.csv`` and ``sensitivity.png`` into ``out_dir``."""
    sensitivities = perform_sensitivity_analysis(model, params, sparsities, test_func, group)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return sensitivities_to_csv(sensitivities, out_dir / CSV_NAME), sensitivities_to_png(sensitivities,
                                                                                         out_dir / PNG_NAME)


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
