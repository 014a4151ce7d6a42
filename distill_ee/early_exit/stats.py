"""Per-exit statistics: how many samples each exit takes, how accurate it is, what it costs.

Each exit's row: ``name, threshold, taken_pct, top1_taken, top1_if_all_exit_here, macs`` (percentages
0-100; ``top1_taken`` is None when no sample took the exit). The final classifier is the last row, with
threshold None. Labels are used only to score decisions, never to make them.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from .criteria import CriterionArg, criteria_list
from .decisions import decide_exits

def exit_statistics(exit_logits: Sequence[torch.Tensor], targets: torch.Tensor, criterion: CriterionArg,
                    thresholds: Sequence[Optional[float]], macs_per_exit: Sequence[float],
                    names: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """One statistics row per exit (final classifier last) from every exit's logits on every sample.

    ``thresholds`` has one entry per early exit (a trailing None for the final classifier is accepted);
    ``macs_per_exit`` one per output, the final classifier's last (see ``cost.exit_macs``).
    """
    num_exits = len(exit_logits) - 1
    criteria = criteria_list(criterion, num_exits)
    thresholds = list(thresholds)[:num_exits]
    if len(thresholds) != num_exits or len(macs_per_exit) != num_exits + 1:
        raise ValueError(f"{num_exits + 1} outputs need {num_exits} thresholds and {num_exits + 1} MAC counts, got "
                         f"{len(thresholds)} and {len(macs_per_exit)}")
    names = list(names) if names is not None else [f"exit{k + 1}" for k in range(num_exits)] + ["final"]
    _, chosen = decide_exits(exit_logits, criteria, thresholds)
    n = max(int(targets.shape[0]), 1)
    rows = []
    for k, logits in enumerate(exit_logits):
        correct = logits.argmax(dim=1) == targets
        taken = chosen == k
        count = int(taken.sum())
        rows.append({
            "name": names[k],
            "threshold": thresholds[k] if k < num_exits else None,
            "taken_pct": 100.0 * count / n,
            "top1_taken": 100.0 * float(correct[taken].float().mean()) if count else None,
            "top1_if_all_exit_here": 100.0 * float(correct.float().mean()),
            "macs": macs_per_exit[k],
        })
    return rows


def expected_macs(exit_stats: Iterable[Mapping[str, Any]]) -> float:
    """Average MACs per sample: each exit's MACs weighted by the share of samples that took it."""
    return float(sum(row["taken_pct"] / 100.0 * row["macs"] for row in exit_stats))


def overall_top1(exit_stats: Iterable[Mapping[str, Any]]) -> float:
    """Top-1 (0-100) of the multi-exit model: each sample scored at the exit it took."""
    return float(sum(row["taken_pct"] * (row["top1_taken"] or 0.0) / 100.0 for row in exit_stats))


def collect_exit_logits(multi: torch.nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]
                        ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Every exit's logits and the targets over ``(inputs, targets)`` batches, from ``multi.simulate``."""
    per_exit: List[List[torch.Tensor]] = []
    targets: List[torch.Tensor] = []
    for x, y in batches:
        logits = multi.simulate(x)
        if not per_exit:
            per_exit = [[] for _ in logits]
        for store, l in zip(per_exit, logits):
            store.append(l.detach().cpu())
        targets.append(y.detach().cpu())
    if not per_exit:
        raise ValueError("no batches to collect exit logits from")
    return [torch.cat(ls) for ls in per_exit], torch.cat(targets)
