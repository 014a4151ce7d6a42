"""Sensitivity pruning: threshold = sensitivity x standard deviation (Distiller's SensitivityPruner).

From Han et al., "Learning both Weights and Connections for Efficient Neural Networks": the threshold of
a weight is a quality parameter (its *sensitivity*) times the standard deviation of the weight. As in
Distiller the standard deviation is measured once, the first time the weight is pruned, and kept: as
pruning goes on more weights fall below the fixed threshold.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from ..arguments import ParamMap
from ..registry import PRUNERS
from .magnitude import threshold_mask
from .per_weight import PerWeightPruner
from .pruner import check_number_map


@PRUNERS.register()
class SensitivityPruner(PerWeightPruner):
    """Prunes elements below ``sensitivity * std(weight)``; ``'*'`` gives the sensitivity of any other weight."""

    def __init__(self, name: str, sensitivities: ParamMap[float]):
        super().__init__(name)
        self.sensitivities = check_number_map(f"SensitivityPruner {name!r}", "sensitivities", sensitivities)
        self.stddev: Dict[str, float] = {}

    def values(self) -> Mapping[str, float]:
        """The sensitivity of each weight."""
        return self.sensitivities

    def mask_of(self, param: torch.Tensor, param_name: str, value: float) -> Optional[torch.Tensor]:
        """Mask the elements of ``param`` whose magnitude is at most its sensitivity times its (first) std."""
        if param_name not in self.stddev:
            self.stddev[param_name] = torch.std(param.detach()).item()
        return threshold_mask(param, self.stddev[param_name] * value)

    def state_dict(self) -> Dict[str, Any]:
        """The standard deviations measured so far."""
        return {"stddev": dict(self.stddev)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the measured standard deviations."""
        self.stddev = {str(k): float(v) for k, v in state.get("stddev", {}).items()}
