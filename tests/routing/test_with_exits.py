"""Routing and early exits in one model: exits read routed blocks, the batch shrinks through both, real equals
simulated, and one training step trains exits and routing together."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit.exits import EarlyExits
from distill_ee.routing import Routing
from routing_support import INPUT, build, routing_schedule
from support import one_epoch_of_one_step

EXITS = """
early_exits:
  exits:
    class: EarlyExit
    criterion: entropy
    exits:
      exit1:
        attach: layer1.1
        branch: [{type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
      exit2:
        attach: layer2.0
        branch: [{type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
"""
POLICIES = """
  - routing: {instance_name: r}
    starting_epoch: 0
    ending_epoch: 2
  - early_exit: {instance_name: exits}
    starting_epoch: 0
    ending_epoch: 2"""


@pytest.fixture(params=[("SkipGates", "    gate: rnn"), ("BlockDrop", "    policy_downsample: 1")],
                ids=["rnn-gates", "blockdrop"])
def routed_with_exits(request, data):
    cls, extra = request.param
    model, optimizer, scheduler = build(routing_schedule(cls, extra=extra + "\n" + EXITS, policies=POLICIES))
    x, y = data
    for epoch in range(2):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    routing = Routing.of(model).set
    torch.manual_seed(3)
    with torch.no_grad():  # decisions that differ between samples
        for name, p in routing.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 2.0)
    exits = EarlyExits.of(model)
    with torch.no_grad():  # thresholds at each exit's median entropy: some samples leave, some go on
        logits = exits.multi_exit_model().eval().simulate(torch.randn(64, *INPUT))
        entropy = [-(l.softmax(1) * l.log_softmax(1)).sum(1) for l in logits[:2]]
    exits.set_thresholds([float(e.median()) for e in entropy])
    return model.eval(), scheduler


def test_real_early_exit_through_routed_blocks_equals_simulated(routed_with_exits):
    model, _ = routed_with_exits
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = torch.randn(64, *INPUT, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, index = multi(x)
        sim_logits, sim_index = multi.decide(multi.simulate(x))
        singles = [multi(x[i:i + 1]) for i in range(16)]
    assert torch.equal(index, sim_index)
    assert 0 < int((index == 2).sum()) < 64  # some samples go on past the exits, through shrunk state
    torch.testing.assert_close(logits, sim_logits, rtol=1e-5, atol=1e-5)
    for i, (l, k) in enumerate(singles):
        assert int(k) == int(index[i])
        torch.testing.assert_close(l[0], logits[i], rtol=1e-5, atol=1e-5)


def test_the_final_exit_of_the_cut_model_is_the_routed_network(routed_with_exits):
    model, _ = routed_with_exits
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = torch.randn(8, *INPUT)
    with torch.no_grad():
        torch.testing.assert_close(multi.simulate(x)[-1], model(x), rtol=1e-5, atol=1e-5)


def test_one_step_trains_exit_branches_and_routing_together(routed_with_exits, data):
    model, scheduler = routed_with_exits
    x, y = data
    model.train()
    scheduler.on_epoch_begin(1)
    scheduler.on_minibatch_begin(1, 0, 1)
    result = scheduler.before_backward_pass(1, 0, 1, nn.functional.cross_entropy(model(x), y), target=y,
                                            return_loss_components=True)
    names = {c.name for c in result.loss_components}
    assert {"exit1_loss", "exit2_loss"} <= names and any(n.startswith("routing") for n in names)
    result.overall_loss.backward()
    routing = Routing.of(model).set
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in routing.parameters())
    assert model.early_exits.exit1[-1].weight.grad is not None
    scheduler.on_epoch_end(1)


def test_counted_macs_of_real_early_exit_through_routing_match_the_decisions(routed_with_exits):
    from distill_ee.routing.stats import executed_macs
    model, _ = routed_with_exits
    multi = EarlyExits.of(model).multi_exit_model().eval()
    x = torch.randn(32, *INPUT, generator=torch.Generator().manual_seed(6))
    counted_all = executed_macs(model, model, [x])  # the routed network alone
    counted = executed_macs(multi, model, [x])  # with exits: fewer samples reach the later layers
    from distill_ee.dynamic import static_compute
    from distill_ee.summaries import total_macs
    with static_compute(model):
        dense = total_macs(model, x[:1])[0]
    assert counted < dense and counted_all < dense + 1e6
    # one sample at a time, the counts add up to the batch's
    singles = sum(executed_macs(multi, model, [x[i:i + 1]]) for i in range(32)) / 32
    assert singles == pytest.approx(counted)


def test_a_checkpoint_rebuilds_routing_and_exits_without_the_schedule(routed_with_exits, tmp_path):
    from distill_ee.checkpoint import load_checkpoint, save_checkpoint
    from routing_support import TinyRes
    model, _ = routed_with_exits
    save_checkpoint(tmp_path / "both.pth", model)
    fresh = TinyRes()
    load_checkpoint(fresh, tmp_path / "both.pth")
    x = torch.randn(32, *INPUT, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        a = EarlyExits.of(model).multi_exit_model().eval()(x)
        b = EarlyExits.of(fresh).multi_exit_model().eval()(x)
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0])
    assert Routing.of(fresh).kind == Routing.of(model).kind
