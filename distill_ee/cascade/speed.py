"""Wall-clock speed of a real cascade against its last member alone and against its oracle bound."""
from __future__ import annotations

import statistics
from typing import Any, Dict

import torch

from ..timing import interleaved_rounds
from .cascade import Cascade


def measure_cascade_speed(cascade: Cascade, inputs: torch.Tensor, batch_size: int) -> Dict[str, Any]:
    """Real cascade against the last member alone and against its oracle bound (sum over members of the share
    answered there times the measured time of the members run up to it), in interleaved rounds; and real =
    simulated on ``inputs``."""
    batches = list(torch.split(inputs, batch_size))
    n, last = inputs.shape[0], len(cascade.members) - 1
    candidates = {f"member{k}": (lambda k=k: [cascade.run_member(k, b) for b in batches])
                  for k in range(len(cascade.members))}
    candidates["cascade"] = lambda: [cascade(b) for b in batches]
    rounds = interleaved_rounds(candidates, 5, context=torch.inference_mode)
    logits, index = cascade(inputs)
    sim_logits, sim_index = cascade.decide(cascade.simulate(inputs))
    same = bool(torch.equal(index, sim_index)) and bool(torch.allclose(logits, sim_logits, atol=1e-5))
    times = [min(rounds[f"member{k}"]) / n for k in range(len(cascade.members))]
    run = [t if k == last or cascade.thresholds[k] is not None else 0.0 for k, t in enumerate(times)]
    shares = torch.bincount(index, minlength=len(cascade.members)).double() / n
    oracle = float(sum(float(shares[k]) * sum(run[:k + 1]) for k in range(len(run))))
    real = min(rounds["cascade"]) / n
    spread = max(statistics.median(r) / min(r) - 1 for r in rounds.values())
    return {"speedup": times[last] / real, "seconds_per_sample": real, "last_alone_seconds_per_sample": times[last],
            "oracle_seconds_per_sample": oracle, "oracle_ratio": oracle / real, "spread": spread,
            "reached_last": int((index == last).sum()), "real_equals_simulated": same}
