"""Wall-clock timing on a shared, noisy machine: the one helper every measurement of the framework uses.

``median_time(fn)`` is what one call typically takes (the median of a few calls after a warm-up): what
latency predictions use. ``interleaved_rounds(candidates)`` times candidates against each other in rounds in
which they take turns, so that a burst of load does not land on one of them only; comparisons keep each
candidate's best round and report the spread. Nothing here imports torch (the ONNX Runtime side uses it too);
callers pass torch's ``inference_mode`` as ``context`` where they time PyTorch.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, ContextManager, Dict, List, Optional


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_rounds(candidates: Dict[str, Callable[[], Any]], repeats: int = 5,
                       context: Optional[Callable[[], ContextManager[Any]]] = None) -> Dict[str, List[float]]:
    """Seconds of each candidate in each of ``repeats`` rounds (one warm-up call each first), the candidates
    taking turns within a round; all of it inside ``context()`` when given (e.g. ``torch.inference_mode``)."""
    rounds: Dict[str, List[float]] = {name: [] for name in candidates}
    with (context() if context is not None else contextlib.nullcontext()):
        for fn in candidates.values():
            fn()
        for _ in range(repeats):
            for name, fn in candidates.items():
                t0 = time.perf_counter()
                fn()
                rounds[name].append(time.perf_counter() - t0)
    return rounds
