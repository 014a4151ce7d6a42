"""Wall-clock measurement of early-exit inference against its physical limit (the oracle time bound).

For measured exit fractions f_k, the oracle bound is sum_k f_k * T_k, with T_k the measured time of the stages
and branches up to exit k at the same batch size: what a perfect implementation that knew in advance where
each sample leaves would spend. Real early exit pays on top of it for deciding and shrinking the batch.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import nn

from ..early_exit.collaboration import run_branch
from ..early_exit.multi_exit import MultiExitModel
from ..timing import interleaved_rounds, median_time


def run_prefix(multi: MultiExitModel, x: torch.Tensor, k: int) -> torch.Tensor:
    """Stages 0..k and the branches 0..k on every sample of ``x`` (what a sample leaving at exit k costs)."""
    plan = multi.plan
    env: List[Any] = [None] * plan.num_slots
    env[0] = x
    multi.begin(x)
    out = x
    previous = None
    for j in range(k + 1):
        for slot, value in zip(plan.outputs[j], multi.stages[j].forward(*[env[i] for i in plan.inputs[j]])):
            env[slot] = value
        if j < plan.num_exits:
            out = previous = run_branch(multi.branches[j], env[plan.attach[j]], previous)
        else:
            out = env[plan.result]
    return out


def prefix_times(multi: MultiExitModel, batches: Sequence[torch.Tensor], repeats: int = 5) -> List[float]:
    """Seconds per sample to reach each exit (final last), measured over ``batches``."""
    n = sum(int(b.shape[0]) for b in batches)
    out = []
    with torch.inference_mode():
        for k in range(multi.num_exits + 1):
            out.append(median_time(lambda: [run_prefix(multi, b, k) for b in batches], repeats) / n)
    return out


def oracle_bound(fractions: Sequence[float], per_sample_times: Sequence[float]) -> float:
    """Seconds per sample of the oracle: sum_k fraction_k * time to reach exit k."""
    return float(sum(f * t for f, t in zip(fractions, per_sample_times)))


def exit_fractions(multi: MultiExitModel, batches: Sequence[torch.Tensor]) -> List[float]:
    """Share of samples (0..1) leaving at each exit, final last, from real early-exit inference."""
    counts = torch.zeros(multi.num_exits + 1)
    with torch.inference_mode():
        for b in batches:
            _, idx = multi(b)
            counts += torch.bincount(idx.cpu(), minlength=multi.num_exits + 1).float()
    return (counts / counts.sum()).tolist()


def compare_speed(model: nn.Module, multi: MultiExitModel, inputs: torch.Tensor, batch_size: int,
                  repeats: int = 5) -> Dict[str, Any]:
    """Per-sample seconds of backbone, compute-every-exit, real early exit and the oracle bound at one batch
    size, plus the exit fractions they were measured at.

    The candidates are timed in interleaved rounds and each keeps its fastest round, so that a burst of load
    on a shared machine does not land on one of them only; ``spread`` is how much slower than its best round
    the median round of the backbone or of real early exit was (0.1: 10%; one slow round does not count).
    """
    batches = list(torch.split(inputs, batch_size))
    n = inputs.shape[0]
    model.eval()
    multi.eval()
    candidates: Dict[str, Callable[[], Any]] = {
        "backbone": lambda: [model(b) for b in batches],
        "every_exit": lambda: [multi.decide(multi.simulate(b)) for b in batches],
        "real": lambda: [multi(b) for b in batches],
    }
    for k in range(multi.num_exits + 1):
        candidates[f"prefix{k}"] = (lambda k=k: [run_prefix(multi, b, k) for b in batches])
    rounds = interleaved_rounds(candidates, repeats, context=torch.inference_mode)
    best = {name: min(times) for name, times in rounds.items()}
    fractions = exit_fractions(multi, batches)
    prefixes = [best[f"prefix{k}"] / n for k in range(multi.num_exits + 1)]
    spread = max(statistics.median(rounds[name]) / best[name] - 1.0 for name in ("backbone", "real"))
    return {"batch_size": batch_size, "backbone": best["backbone"] / n, "every_exit": best["every_exit"] / n,
            "real": best["real"] / n, "oracle": oracle_bound(fractions, prefixes), "fractions": fractions,
            "spread": spread}
