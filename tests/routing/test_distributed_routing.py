"""Routing under torch.distributed (two gloo processes): DDP follows the routing's phases (gates idle before
their epochs, a frozen backbone, joint fine-tuning) and the ranks end bit-identical."""
import pytest
import torch
from torch import nn

from distill_ee import distributed
from ddp_support import run_ranks
from routing_support import INPUT, build, routing_schedule

pytestmark = pytest.mark.slow

SCHEDULES = {
    "blockdrop": routing_schedule("BlockDrop", extra="    policy_downsample: 1", policies="""
  - routing: {instance_name: r, args: {curriculum_step: 1}}
    starting_epoch: 1
    ending_epoch: 2
  - routing: {instance_name: r, args: {freeze_backbone: false}}
    starting_epoch: 2
    ending_epoch: 3"""),
    "skipnet-rnn": routing_schedule("SkipGates", extra="    gate: rnn", policies="""
  - routing: {instance_name: r, args: {phase: supervised, alpha: 0.5}}
    starting_epoch: 1
    ending_epoch: 2
  - routing: {instance_name: r, args: {phase: reinforce, alpha: 0.5}}
    starting_epoch: 2
    ending_epoch: 3"""),
}


def routed_ddp_run(text):
    """Three epochs of two steps each on this process's own batches; the final state and DDP's rebuilds."""
    distributed.init_from_env("gloo")
    model, optimizer, scheduler = build(text)
    net = distributed.wrap(model, scheduler)
    gen = torch.Generator().manual_seed(10 + distributed.rank())
    for epoch in range(3):
        scheduler.on_epoch_begin(epoch)
        net.train()
        for step in range(2):
            x, y = torch.randn(8, *INPUT, generator=gen), torch.randint(0, 4, (8,), generator=gen)
            scheduler.on_minibatch_begin(epoch, step, 2)
            loss = scheduler.before_backward_pass(epoch, step, 2, nn.functional.cross_entropy(net(x), y), target=y)
            optimizer.zero_grad()
            loss.backward()
            scheduler.before_parameter_optimization(epoch, step, 2)
            optimizer.step()
            scheduler.on_minibatch_end(epoch, step, 2)
        scheduler.on_epoch_end(epoch)
    # parameters (batch-norm statistics are rank 0's at the start of every forward pass, DDP's broadcast_buffers)
    return {"state": {k: v.detach().clone() for k, v in model.named_parameters()},
            "rebuilds": getattr(net, "rebuilds", 0)}


@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_two_ranks_train_routing_to_identical_parameters(kind):
    first, second = run_ranks(routed_ddp_run, SCHEDULES[kind], world=2)
    assert first["state"].keys() == second["state"].keys()
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name
    assert first["rebuilds"] >= 2  # built without the idle gates, rebuilt when their policy started
