"""Forward knowledge transfer (IMTA's inline sub-network collaboration): each exit after the first reads the
previous exit's logits, in training, in simulated and in real early exit."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit.collaboration import CollaborativeBranch
from distill_ee.early_exit.exits import EarlyExits
from distill_ee.errors import DistillEEError, ScheduleError
from routing_support import INPUT, build
from support import one_epoch_of_one_step

SCHEDULE = """
version: 1
early_exits:
  exits:
    class: EarlyExit
    forward_transfer: true
    exits:
      exit1:
        attach: layer1.0
        branch: [{type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
      exit2:
        attach: layer1.1
        branch: [{type: conv, out_channels: 8, kernel_size: 3, padding: 1}, relu,
                 {type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
      exit3:
        attach: layer2.0
        branch: [{type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
policies:
  - early_exit: {instance_name: exits}
    starting_epoch: 0
    ending_epoch: 2
"""


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, *INPUT, generator=gen), torch.randint(0, 4, (32,), generator=gen)


@pytest.fixture
def trained(data):
    model, optimizer, scheduler = build(SCHEDULE)
    x, y = data
    for epoch in range(2):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    exits = EarlyExits.of(model)
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():  # thresholds at each exit's median entropy: some samples leave, some go on
        logits = multi.simulate(torch.randn(64, *INPUT, generator=torch.Generator().manual_seed(3)))
    exits.set_thresholds([float((-(l.softmax(1) * l.log_softmax(1)).sum(1)).median()) for l in logits[:-1]])
    return model.eval(), scheduler


def test_every_exit_after_the_first_reads_the_previous_exits_logits(trained):
    model, _ = trained
    branches = [model.early_exits[n] for n in ("exit1", "exit2", "exit3")]
    assert not isinstance(branches[0], CollaborativeBranch)
    assert all(isinstance(b, CollaborativeBranch) for b in branches[1:])
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = torch.randn(4, *INPUT)
    seen = []
    branches[2].transfer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        logits = multi.simulate(x)
    torch.testing.assert_close(seen[0], logits[1])  # exit3's transfer module read exit2's logits


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_real_early_exit_equals_simulated_with_the_previous_logits_following_the_batch(trained, batch):
    model, _ = trained
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        real_logits, real_index = multi(x)
        sim_logits, sim_index = multi.decide(multi.simulate(x))
    assert torch.equal(real_index, sim_index)
    torch.testing.assert_close(real_logits, sim_logits, rtol=1e-5, atol=1e-5)
    if batch == 256:
        assert len(set(real_index.tolist())) > 2  # samples left at several exits: the shrinking was exercised


def test_every_earlier_branch_is_computed_when_a_later_one_reads_it(trained):
    model, _ = trained
    exits = EarlyExits.of(model)
    exits.set_thresholds([None, None, 0.5])
    multi = exits.multi_exit_model().eval()
    assert multi.computed_exits == [True, True, True]
    macs = exits.exit_macs()
    assert macs[-1] > macs[-2] > macs[-3]


def test_the_later_exits_loss_trains_the_earlier_branch(data):
    model, _, scheduler = build(SCHEDULE.replace("""      exit3:
        attach: layer2.0
        branch: [{type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
""", ""))
    x, y = data
    scheduler.on_epoch_begin(0)
    model.train()
    scheduler.on_minibatch_begin(0, 0, 1)
    model(x)
    logits = scheduler.policies[0].hooks.pop_logits()
    nn.functional.cross_entropy(logits[1], y).backward()
    assert model.early_exits.exit1[-1].weight.grad.abs().sum() > 0  # through exit2's transfer module


def test_forward_transfer_needs_branches_ending_with_their_linear_layer():
    text = SCHEDULE.replace("branch: [{type: conv, out_channels: 8, kernel_size: 3, padding: 1}, relu,\n"
                            "                 {type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]",
                            "branch: [{type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}, relu]")
    with pytest.raises(ScheduleError, match=r"early_exits.exits.exits.exit2.branch: forward_transfer needs each "
                                            r"branch to end with its linear layer"):
        build(text)


def test_exits_with_forward_transfer_are_not_exported(trained, tmp_path):
    from distill_ee.early_exit.export import export_torchscript
    model, _ = trained
    with pytest.raises(DistillEEError, match="forward_transfer"):
        export_torchscript(EarlyExits.of(model).multi_exit_model().eval(), tmp_path)
