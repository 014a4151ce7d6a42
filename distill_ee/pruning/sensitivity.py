"""Sensitivity pruning: threshold = sensitivity x standard deviation (Distiller's SensitivityPruner).

From Han et al., "Learning both Weights and Connections for Efficient Neural Networks": the threshold of
a weight is a quality parameter (its *sensitivity*) times the standard deviation of the weight. As in
Distiller the standard deviation is measured once, the first time the weight is pruned, and kept: as
pruning goes on more weights fall below the fixed threshold.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..arguments import ParamMap
from ..registry import PRUNERS
from .magnitude import threshold_mask
from .masks import ParameterMasker
from .pruner import Pruner, check_number_map, per_weight_value


@PRUNERS.register()
class SensitivityPruner(Pruner):
    """Prunes elements below ``sensitivity * std(weight)``; ``'*'`` gives the sensitivity of any other weight."""

    def __init__(self, name: str, sensitivities: ParamMap[float]):
        super().__init__(name)
        self.sensitivities = check_number_map(f"SensitivityPruner {name!r}", "sensitivities", sensitivities)
        self.stddev: Dict[str, float] = {}

    def handles(self, param_name: str) -> bool:
        """True when ``param_name`` has a sensitivity of its own or there is a ``'*'`` default."""
        return per_weight_value(self.sensitivities, param_name) is not None

    def set_param_mask(
        self,
        param: torch.Tensor,
        param_name: str,
        zeros_mask_dict: Dict[str, ParameterMasker],
        meta: Dict[str, Any],
    ) -> None:
        """Mask the elements of ``param`` whose magnitude is at most its threshold."""
        sensitivity = per_weight_value(self.sensitivities, param_name)
        if sensitivity is None:
            return
        if param_name not in self.stddev:
            self.stddev[param_name] = torch.std(param.detach()).item()
        zeros_mask_dict[param_name].mask = threshold_mask(param, self.stddev[param_name] * sensitivity)

    def state_dict(self) -> Dict[str, Any]:
        """The standard deviations measured so far."""
        return {"stddev": dict(self.stddev)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the measured standard deviations."""
        self.stddev = {str(k): float(v) for k, v in state.get("stddev", {}).items()}
