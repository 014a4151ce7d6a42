"""The per-epoch figures of a schedule's run, flat mappings: the sparsity, each policy's epoch metrics, and the
exits' shares and expected MACs on a split.

The sample app writes them to metrics.csv and to its trackers; the Lightning callback logs the same names."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

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


def exit_scalars(exits: Optional[Any], batches: Optional[Iterable[Any]], masks: Optional[Any] = None
                 ) -> Dict[str, float]:
    """Each exit's share of the samples in ``batches`` (percent), ``EXIT_share``, and their expected MACs,
    ``macs_expected``, under the current thresholds (one pass of real early exit; nothing without exits or
    batches)."""
    if exits is None or batches is None:
        return {}
    from .early_exit.stats import expected_macs

    rows = exits.evaluate(batches, masks)
    out = {f"{row['name']}_share": float(row["taken_pct"]) for row in rows}
    out["macs_expected"] = float(expected_macs(rows))
    return out
