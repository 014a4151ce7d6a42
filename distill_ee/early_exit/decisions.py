"""Simulated exit decisions: which exit each sample takes, given every exit's logits for every sample."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .criteria import ExitCriterion, State


def decide_exits(exit_logits: Sequence[torch.Tensor], criteria: Sequence[ExitCriterion],
                 thresholds: Sequence[Optional[float]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits of the exit each sample takes, exit index per sample) from all exits' logits.

    ``exit_logits`` holds one (N, C) tensor per early exit followed by the final classifier's; ``criteria``
    and ``thresholds`` have one entry per early exit (a None threshold never exits). A sample takes the
    first exit whose criterion fires, else the final classifier (index ``len(exit_logits) - 1``).
    """
    num_exits = len(exit_logits) - 1
    if len(criteria) != num_exits or len(thresholds) != num_exits:
        raise ValueError(f"need one criterion and threshold per early exit ({num_exits}), got "
                         f"{len(criteria)} and {len(thresholds)}")
    final = exit_logits[-1]
    n = final.shape[0]
    exit_index = torch.full((n,), num_exits, dtype=torch.long, device=final.device)
    pending = torch.ones(n, dtype=torch.bool, device=final.device)
    state: State = {}
    for k in range(num_exits):
        if thresholds[k] is None and not criteria[k].stateful:
            continue
        fires = criteria[k].exit_mask(exit_logits[k], _effective(thresholds[k]), state)
        take = fires & pending
        exit_index[take] = k
        pending &= ~take
    chosen = _gather_by_exit(exit_logits, exit_index)
    return chosen, exit_index


def _effective(threshold: Optional[float]) -> float:
    """A None threshold on a stateful criterion: update its state but never exit."""
    return float("inf") if threshold is None else threshold


def _gather_by_exit(exit_logits: Sequence[torch.Tensor], exit_index: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row i of ``exit_logits[exit_index[i]]``."""
    stacked = torch.stack(list(exit_logits), dim=0)
    rows = torch.arange(exit_index.shape[0], device=exit_index.device)
    return stacked[exit_index, rows]


def exit_counts(exit_index: torch.Tensor, num_outputs: int) -> List[int]:
    """How many samples took each exit (final classifier included)."""
    return torch.bincount(exit_index, minlength=num_outputs).tolist()
