"""Helpers shared by several test files (``pythonpath = tests`` in pytest.ini makes this importable)."""
import torch

from distill_ee.early_exit.tradeoff import ExitCosts


def synthetic(n=600, strengths=(1.0, 2.0, 4.0), classes=10, seed=0):
    """Logits of exits of increasing strength (the last is the final classifier) and random labels."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (n,), generator=gen)
    logits = []
    for s in strengths:
        l = torch.randn(n, classes, generator=gen)
        l[torch.arange(n), targets] += s
        logits.append(l)
    return logits, targets


def costs_for(num_exits, branch=3.0):
    """Leaving at exit k costs (k+1)/(K+1) of a 100-MAC backbone plus the branches on the way."""
    macs = [100.0 * (k + 1) / (num_exits + 1) + branch * min(k + 1, num_exits) for k in range(num_exits + 1)]
    return ExitCosts(macs, 100.0, [branch] * num_exits)
