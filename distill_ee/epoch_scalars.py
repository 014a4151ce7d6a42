"""The per-epoch figures of a schedule's run, one flat mapping: the sparsity and each policy's epoch metrics.

The sample app writes them to metrics.csv and to its trackers; the Lightning callback logs the same names."""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

from .summaries import total_sparsity


def policy_scalars(scheduler: Optional[Any]) -> Dict[str, float]:
    """Each scheduled policy's ``epoch_metrics()`` of the epoch just ended (exit losses and top-1, routing and
    distillation figures), merged; reading them resets them."""
    out: Dict[str, float] = {}
    for policy in (scheduler.policies if scheduler else []):
        metrics = getattr(policy, "epoch_metrics", None)
        if metrics is not None:
            out.update({k: float(v) for k, v in metrics().items()})
    return out


def sparsity_scalar(model: nn.Module, scheduler: Optional[Any]) -> float:
    """Percentage (0-100) of zero weights among those the sparsity table lists, under the scheduler's masks."""
    return total_sparsity(model, scheduler.masks if scheduler else None)
