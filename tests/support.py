"""Helpers shared by several test files (``pythonpath = tests`` in pytest.ini makes this importable)."""
import contextlib
import signal

import torch
from torch import nn

from distill_ee.early_exit.hooks import ExitHooks
from distill_ee.early_exit.tradeoff import ExitCosts

#: one exit after lenet_mnist's pool1
LENET_EXIT = {"exits": {"exit1": {"attach": "pool1", "branch": ["flatten", "linear"], "threshold": 1.5}}}


def lenet_with_exit(exit_=True):
    """lenet_mnist (1x28x28 digits, 10 classes), seeded, with ``LENET_EXIT`` attached unless ``exit_`` is False."""
    from distill_ee.apputils.models import create_model
    from distill_ee.early_exit import EarlyExits

    torch.manual_seed(0)
    model = create_model("lenet_mnist", 10, 1)
    if exit_:
        EarlyExits.from_config(LENET_EXIT, model, num_classes=10, input_shape=(1, 28, 28))
    return model


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


#: how long a case may run before it counts as hung: a guard against a hang (a FIFO read, a runaway loop), far
#: above what any case takes even on a loaded machine; never a speed test
HANG_SECONDS = 60


class Hung(Exception):
    """A block guarded by ``no_hang`` ran past its time."""


@contextlib.contextmanager
def no_hang(seconds=HANG_SECONDS):
    """Raise Hung in the block once it has run ``seconds`` (main thread only)."""
    def stop(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every batch norm trained-looking statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


def exit_logits(model: nn.Module, x: torch.Tensor) -> list:
    """Every exit's logits and the final logits, in eval mode (hooks run only with autograd on)."""
    model.eval()
    hooks = ExitHooks(model)
    hooks.enable()
    try:
        with torch.enable_grad():
            final = model(x)
        return [t.detach() for t in hooks.pop_logits()] + [final.detach()]
    finally:
        hooks.disable()
