"""Helpers shared by several test files (``pythonpath = tests`` in pytest.ini makes this importable)."""
import torch
from torch import nn

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


def conv_macs(pixels_out, c_out, c_in, kernel=3):
    """Multiply-accumulates of a convolution: output pixels x output channels x kernel area x input channels."""
    return pixels_out * c_out * kernel * kernel * c_in


def one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y):
    """One epoch of one training step on ``(x, y)`` with every scheduler hook, in the README's order."""
    scheduler.on_epoch_begin(epoch)
    scheduler.on_minibatch_begin(epoch, 0, 1)
    loss = scheduler.before_backward_pass(epoch, 0, 1, nn.functional.cross_entropy(model(x), y), target=y)
    optimizer.zero_grad()
    loss.backward()
    scheduler.before_parameter_optimization(epoch, 0, 1)
    optimizer.step()
    scheduler.on_minibatch_end(epoch, 0, 1)
    scheduler.on_epoch_end(epoch, metrics={"min": 1.0, "max": 10.0})
