"""How close the multi-tier simulation comes to the planner's expected latency.

A small three-conv network with one exit (about half the samples leave there) is exported to ONNX and split
between a device and an edge tier at the exit, as ``distill-ee plan-split`` does it; each link setting below is
planned with this machine's measured stage times and simulated with the tier processes. The candidates run in
interleaved rounds and each keeps its best round (the trimmed mean of its samples' latencies); ``spread`` is how
much slower the median round was than the best one. A ratio far from 1 while the spread is large was measured
on a busy machine; at latencies under a millisecond the pipes between the processes (a few tenths of a
millisecond per hop) show in the ratio, which the plan does not count.

    python benchmarks/tiers_simulation.py [--rounds 3] [--samples 40]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee.deploy import MultiExitSession  # noqa: E402
from distill_ee.deploy.profile import profile_session  # noqa: E402
from distill_ee.deploy.tiers import (Link, SplitInputs, Tier, expected_latency, reach_of, simulate,  # noqa: E402
                                     write_tiers)
from distill_ee.early_exit import EarlyExits  # noqa: E402
from distill_ee.early_exit.onnx_export import export_onnx  # noqa: E402

#: (name, device speed, link bandwidth in bytes/s, link latency in s)
SETTINGS: List[Tuple[str, float, float, float]] = [
    ("slow link (2 MB/s, 3 ms)", 0.5, 2e6, 3e-3),
    ("fast link (100 MB/s, 1 ms)", 0.5, 1e8, 1e-3),
    ("slow device (x0.1), fast link", 0.1, 1e8, 1e-3),
]


class Net(nn.Module):
    """Three convolutions and a classifier on 1x12x12 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))).mean(dim=(2, 3)))


def export(directory: Path, samples: int) -> Tuple[MultiExitSession, np.ndarray]:
    """The ONNX session of the network with an exit after c1 that about half of ``samples`` inputs take."""
    torch.manual_seed(0)
    model = Net().eval()
    exits = EarlyExits.from_config({"exits": {"e1": {"attach": "c1", "branch": ["adaptive_avgpool", "flatten",
                                                                             "linear"]}}},
                                   model, num_classes=10, input_shape=(1, 12, 12))
    x = torch.randn(samples, 1, 12, 12)
    with torch.no_grad():
        first = exits.multi_exit_model().eval().simulate(x)[0]
    entropy = -(first.softmax(1) * first.log_softmax(1)).sum(1)
    exits.set_thresholds([float(entropy.median())])
    export_onnx(exits.multi_exit_model().eval(), model, directory)
    return MultiExitSession(directory, threads=1), x.numpy()


def run(rounds: int, samples: int) -> List[List[str]]:
    """One table row per link setting: planned and simulated latency, their ratio, and the spread."""
    with tempfile.TemporaryDirectory() as tmp:
        session, x = export(Path(tmp) / "onnx", samples)
        profile = profile_session(session, x[:20], batch_size=1)
        cut_bytes = [x[:1].nbytes, 8 * 12 * 12 * 4]
        measured: Dict[str, List[float]] = {name: [] for name, *_ in SETTINGS}
        planned: Dict[str, float] = {}
        for _ in range(rounds):
            for name, speed, bandwidth, latency in SETTINGS:
                tiers, links = [Tier("device", speed=speed), Tier("edge", speed=1.0)], [Link(bandwidth, latency)]
                out = Path(tmp) / name.replace(" ", "_").replace("/", "_")
                taken = list(np.bincount(session(x)[1], minlength=2) / len(x))
                inputs = SplitInputs(profile.stages, profile.branches, cut_bytes, reach_of(taken), [True])
                write_tiers(session.manifest, expected_latency([0, 1], inputs, tiers, links), tiers, links, out)
                result = simulate(out, x)
                sim_taken = list(np.bincount(result["exits"], minlength=2) / len(result["exits"]))
                planned[name] = expected_latency([0, 1], SplitInputs(profile.stages, profile.branches, cut_bytes,
                                                                     reach_of(sim_taken), [True]),
                                                 tiers, links).latency
                measured[name].append(result["trimmed_mean"])
    rows = []
    for name, *_ in SETTINGS:
        best, median = min(measured[name]), statistics.median(measured[name])
        rows.append([name, f"{1e3 * planned[name]:.2f}", f"{1e3 * best:.2f}", f"{best / planned[name]:.2f}",
                     f"{100 * (median / best - 1):.0f}%"])
    return rows


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    rows = run(args.rounds, args.samples)
    print(tabulate(rows, headers=["setting", "planned ms", "simulated ms (best round)", "ratio", "spread"]))


if __name__ == "__main__":
    main()
