"""Measured latency of a multi-exit model: per stage and per branch, in one runtime at one batch size.

A ``LatencyProfile`` prices the ways out of the model in seconds per sample instead of MACs (``costs`` has the
shape of the calibration's cost model), and checks BranchyNet's rule (Teerapittayanon et al., 2016): an exit
pays only if the time its branch costs every sample that reaches it is less than the time it saves the
samples that leave there. ``profile_session`` measures an ONNX Runtime export; the PyTorch measurement is
``distill_ee.early_exit.latency``. Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Sequence

import numpy as np

from ..timing import median_time


@dataclass
class LatencyProfile:
    """Seconds per sample of each stage, each branch and the backbone alone, measured in ``runtime``."""

    runtime: str
    batch_size: int
    stages: List[float]
    branches: List[float]
    backbone: float

    def ways_out(self) -> List[float]:
        """Seconds per sample to leave at each exit with every branch on the way run; the final one last."""
        out, paid = [], 0.0
        for stage, branch in zip(self.stages, self.branches):
            paid += stage + branch
            out.append(paid)
        out.append(sum(self.stages) + sum(self.branches))
        return out

    def costs(self) -> Dict[str, Any]:
        """The calibration's cost model in seconds: ways out, the backbone (100%), each branch."""
        return {"per_exit": self.ways_out(), "full": self.backbone, "branches": list(self.branches)}

    def branch_check(self, taken: Sequence[float], names: Sequence[str]) -> List[str]:
        """BranchyNet's rule at the shares ``taken`` (per output, final last, fractions): one warning per exit
        whose branch costs more than it saves, with the numbers (microseconds per sample of the whole batch)."""
        warnings = []
        reach = 1.0
        for k, name in enumerate(names):
            rest = sum(self.stages[k + 1:])
            cost, saved = reach * self.branches[k], taken[k] * rest
            if cost >= saved:
                warnings.append(
                    f"exit {name!r} costs more time than it saves ({self.runtime}, batch {self.batch_size}): its "
                    f"branch takes {1e6 * self.branches[k]:.1f} us per sample for the {100 * reach:.1f}% of the "
                    f"samples that reach it ({1e6 * cost:.1f} us on average), and leaving there saves "
                    f"{1e6 * rest:.1f} us for the {100 * taken[k]:.1f}% that leave ({1e6 * saved:.1f} us); "
                    f"a branch must be cheaper than going on")
            reach -= taken[k]
        return warnings

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (seconds)."""
        return asdict(self)


def profile_session(session: Any, inputs: np.ndarray, batch_size: int, rounds: int = 5) -> LatencyProfile:
    """Per stage, branch and backbone seconds per sample of a ``MultiExitSession`` on ``inputs`` in batches."""
    batches = [np.ascontiguousarray(inputs[i:i + batch_size], dtype=np.float32)
               for i in range(0, inputs.shape[0], batch_size)]
    n = sum(b.shape[0] for b in batches)
    plan = session.plan
    envs: List[List[List[Any]]] = []  # per batch: the slot table before each stage
    done: List[List[Any]] = []  # per batch: every slot, after the last stage
    for b in batches:
        env: List[Any] = [None] * plan["num_slots"]
        env[0] = b
        snapshots = []
        for k in range(len(session.stages)):
            snapshots.append(list(env))
            session.run_stage(k, env)
        envs.append(snapshots)
        done.append(env)
    stages = [median_time(lambda k=k: [session.run_stage(k, list(e[k])) for e in envs], rounds) / n
              for k in range(len(session.stages))]
    branches = [median_time(lambda k=k: [session.run_branch(k, a[plan["attach"][k]]) for a in done], rounds) / n
                for k in range(len(session.branches))]
    backbone = median_time(lambda: [session.backbone(b) for b in batches], rounds) / n
    return LatencyProfile("onnxruntime", batch_size, stages, branches, backbone)
