"""Gradient equilibrium (IMTA): the gradient reaching each stage is the mean of the gradients of the classifiers
that depend on it, checked against per-classifier gradients computed by hand."""
import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.schedule import schedule_from_text

SCHEDULE = """
version: 1
early_exits:
  exits:
    class: EarlyExit
    gradient_equilibrium: GE
    final_loss_weight: 1.0
    exits:
      exit1: {attach: '1', branch: [{type: linear}], loss_weight: 1.0, threshold: 0.5}
      exit2: {attach: '3', branch: [{type: linear}], loss_weight: 1.0, threshold: 0.5}
policies:
  - early_exit: {instance_name: exits}
    starting_epoch: 0
    ending_epoch: 1
"""


class Chain(nn.Module):
    """linear, relu, linear, relu, linear, as children '0' to '4'."""

    def __init__(self):
        super().__init__()
        for i, m in enumerate([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)]):
            self.add_module(str(i), m)

    def __getitem__(self, i):
        return getattr(self, str(i))

    def forward(self, x):
        for i in range(5):
            x = self[i](x)
        return x


def build(ge):
    torch.manual_seed(0)
    model = Chain()
    scheduler = schedule_from_text(model, None, SCHEDULE.replace("GE", ge), file="ge.yaml",
                                   example_input=torch.zeros(1, 4))
    return model, scheduler


def test_each_stage_gets_the_mean_of_its_classifiers_gradients():
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    model, scheduler = build("true")
    scheduler.on_epoch_begin(0)
    scheduler.on_minibatch_begin(0, 0, 1)
    loss = scheduler.before_backward_pass(0, 0, 1, nn.functional.cross_entropy(model(x), y), target=y)
    loss.backward()
    scheduler.on_epoch_end(0)

    # the same network by hand, without any rescaling: one gradient per classifier
    branch1, branch2 = model.early_exits.exit1, model.early_exits.exit2
    h1 = model[1](model[0](x))
    h2 = model[3](model[2](h1))
    losses = [nn.functional.cross_entropy(out, y) for out in (branch1(h1), branch2(h2), model[4](h2))]
    stage1, stage2 = list(model[0].parameters()), list(model[2].parameters())

    def grads(loss, params):
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    def total(which, params):
        parts = [grads(losses[i], params) for i in which]
        return [sum(p[j] if p[j] is not None else 0 for p in parts) for j in range(len(params))]

    for p, expected in zip(stage1, total([0, 1, 2], stage1)):
        torch.testing.assert_close(p.grad, expected / 3)  # three classifiers read stage 1
    for p, expected in zip(stage2, total([1, 2], stage2)):
        torch.testing.assert_close(p.grad, expected / 2)  # two read stage 2
    for p, expected in zip(model[4].parameters(), total([2], list(model[4].parameters()))):
        torch.testing.assert_close(p.grad, expected)
    for p, expected in zip(branch1.parameters(), total([0], list(branch1.parameters()))):
        torch.testing.assert_close(p.grad, expected)  # a branch's own weights are not rescaled


def test_gradient_equilibrium_changes_no_forward_value():
    x = torch.randn(5, 4)
    outputs = []
    for ge in ("true", "false"):
        model, scheduler = build(ge)
        scheduler.on_epoch_begin(0)
        outputs.append((model(x), [l.detach() for l in scheduler.policies[0].hooks.pop_logits()]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    for a, b in zip(outputs[0][1], outputs[1][1]):
        torch.testing.assert_close(a, b)


def test_gradient_equilibrium_is_true_or_false():
    with pytest.raises(ScheduleError, match=r"ge.yaml:\d+: early_exits.exits.gradient_equilibrium: must be true or "
                                            r"false, got 'yes please'"):
        build("yes please")
