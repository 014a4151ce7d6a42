"""Timing candidates against each other on a shared, noisy machine: interleaved rounds, each keeps its best."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import torch


def interleaved_rounds(candidates: Dict[str, Callable[[], Any]], repeats: int = 5) -> Dict[str, List[float]]:
    """Seconds of each candidate in each of ``repeats`` rounds (one warm-up call each first), the candidates
    taking turns within a round so that a burst of load does not land on one of them only; inference mode."""
    rounds: Dict[str, List[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for fn in candidates.values():
            fn()
        for _ in range(repeats):
            for name, fn in candidates.items():
                t0 = time.perf_counter()
                fn()
                rounds[name].append(time.perf_counter() - t0)
    return rounds
