"""Scheduler overhead: a plain PyTorch training epoch vs. the same epoch driven by the scheduler with AGP.

Both loops run in one process on the same model, data and batch order, alternating, several times; the
table shows the median epoch time of each, their ratio, and the time spent inside the scheduler's calls
(measured directly, so it is not blurred by the machine's noise). Target: overhead <= 3%.

    python benchmarks/scheduler_overhead.py [--arch lenet_mnist] [--repeats 9]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_ee.apputils.datasets import load_dataset, make_loaders  # noqa: E402
from distill_ee.apputils.models import create_model  # noqa: E402
from distill_ee.schedule import schedule_from_text  # noqa: E402

AGP = """
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.80
    weights: [{weights}]
policies:
  - pruner:
      instance_name: agp
    starting_epoch: 0
    ending_epoch: {epochs}
    frequency: 1
"""


def plain_epoch(model: nn.Module, loader, opt, crit) -> float:
    """One epoch of the plain loop; returns seconds."""
    model.train()
    t0 = time.perf_counter()
    for x, y in loader:
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


class HookTimer:
    """Wraps the scheduler's hooks and adds up the time spent inside them."""

    HOOKS = ("on_epoch_begin", "on_minibatch_begin", "before_backward_pass", "before_parameter_optimization",
             "on_minibatch_end", "on_epoch_end")

    def __init__(self, sched):
        self.seconds = 0.0
        for name in self.HOOKS:
            setattr(sched, name, self._timed(getattr(sched, name)))

    def _timed(self, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return call


def scheduled_epoch(model: nn.Module, loader, opt, crit, sched, epoch: int) -> float:
    """One epoch of the same loop with every scheduler hook; returns seconds."""
    model.train()
    steps = len(loader)
    t0 = time.perf_counter()
    sched.on_epoch_begin(epoch, opt)
    for i, (x, y) in enumerate(loader):
        sched.on_minibatch_begin(epoch, i, steps, opt)
        loss = crit(model(x), y)
        loss = sched.before_backward_pass(epoch, i, steps, loss, opt, target=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sched.before_parameter_optimization(epoch, i, steps, opt)
        opt.step()
        sched.on_minibatch_end(epoch, i, steps, opt)
    sched.on_epoch_end(epoch, opt, metrics={})
    return time.perf_counter() - t0


def main() -> None:
    """Run both loops alternately and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="lenet_mnist")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    splits = load_dataset("mnist5k", valid_size=0.1)
    loader, _, _ = make_loaders(splits, args.batch_size, seed=0)
    base = create_model(args.arch, num_classes=10, in_channels=1)
    plain_model, sched_model = copy.deepcopy(base), copy.deepcopy(base)
    crit = nn.CrossEntropyLoss()
    opt_a = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_b = torch.optim.SGD(sched_model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    weights = ", ".join(n for n, p in sched_model.named_parameters() if p.dim() > 1)
    sched = schedule_from_text(sched_model, opt_b, AGP.format(weights=weights, epochs=args.repeats + 1))
    plain_epoch(plain_model, loader, opt_a, crit)  # warm-up both paths
    scheduled_epoch(sched_model, loader, opt_b, crit, sched, 0)
    timer = HookTimer(sched)
    plain, scheduled, inside = [], [], []
    for r in range(args.repeats):
        plain.append(plain_epoch(plain_model, loader, opt_a, crit))
        timer.seconds = 0.0
        scheduled.append(scheduled_epoch(sched_model, loader, opt_b, crit, sched, r + 1))
        inside.append(timer.seconds)
    p, s, h = statistics.median(plain), statistics.median(scheduled), statistics.median(inside)
    rows = [["plain PyTorch loop", f"{p:.3f}", "1.000", "-"],
            ["CompressionScheduler + AGP", f"{s:.3f}", f"{s / p:.3f}", f"{h:.4f}"]]
    print(f"{args.arch}, mnist5k train split, batch {args.batch_size}, {len(loader)} steps/epoch, "
          f"median of {args.repeats} alternating epochs")
    print(tabulate(rows, headers=["loop", "epoch seconds", "ratio", "seconds inside scheduler calls"],
                   tablefmt="github"))
    print(f"time inside the scheduler's calls: {100 * h / p:.1f}% of a plain epoch (target <= 3%); "
          f"epoch-time difference: {100 * (s / p - 1):+.1f}% (includes machine noise)")


if __name__ == "__main__":
    main()
