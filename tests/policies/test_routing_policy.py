"""Routing policies: SkipNet's supervised and reinforce losses, BlockDrop's frozen backbone, argument errors,
resuming in the middle of reinforcement learning."""
import pytest
import torch
from torch import nn

from distill_ee.checkpoint import load_checkpoint, save_checkpoint
from distill_ee.errors import ScheduleError
from distill_ee.routing import Routing
from routing_support import INPUT, TinyRes, build, routing_schedule
from support import one_epoch_of_one_step


def entry(args: str, start: int = 0, end: int = 1) -> str:
    return f"""
  - routing: {{instance_name: r, args: {args}}}
    starting_epoch: {start}
    ending_epoch: {end}"""


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, *INPUT, generator=gen), torch.randint(0, 4, (16,), generator=gen)


def first_step(model, scheduler, x, y):
    """The loss the scheduler returns for one training step, and the decisions of its forward pass."""
    scheduler.on_epoch_begin(0)
    model.train()
    scheduler.on_minibatch_begin(0, 0, 1)
    out = model(x)
    trace = list(Routing.of(model).set.trace)
    ce = nn.functional.cross_entropy(out, y)
    return scheduler.before_backward_pass(0, 0, 1, ce, target=y), ce, out, trace


def test_supervised_skipnet_adds_alpha_times_the_mean_used_share_of_macs(data):
    x, y = data
    model, _, scheduler = build(routing_schedule(policies=entry("{phase: supervised, alpha: 0.3, hard: false}")))
    loss, ce, _, trace = first_step(model, scheduler, x, y)
    costs = Routing.of(model).set.costs
    used = sum(r.gate * costs[r.block] for r in trace)
    torch.testing.assert_close(loss, ce + 0.3 * used.mean())
    assert all(torch.equal(r.gate, r.prob) for r in trace)  # soft gates


def test_hard_gates_pass_the_soft_gradient_straight_through(data):
    x, y = data
    model, _, scheduler = build(routing_schedule(policies=entry("{phase: supervised, alpha: 1.0}")))
    loss, _, _, trace = first_step(model, scheduler, x, y)
    assert all(set(r.gate.detach().unique().tolist()) <= {0.0, 1.0} for r in trace)
    loss.backward()
    gates = Routing.of(model).set.gates
    assert all(g.fc2.weight.grad is not None and g.fc2.weight.grad.abs().sum() > 0 for g in gates)


def test_reinforce_skipnet_uses_the_task_loss_and_the_cost_as_reward(data):
    x, y = data
    model, _, scheduler = build(routing_schedule(policies=entry("{phase: reinforce, alpha: 0.5}")))
    loss, ce, out, trace = first_step(model, scheduler, x, y)
    costs = Routing.of(model).set.costs
    used = sum(r.gate * costs[r.block] for r in trace)
    reward = -nn.functional.cross_entropy(out, y, reduction="none") - 0.5 * used
    advantage = reward - reward.mean()
    log_prob = sum(r.log_prob for r in trace)
    torch.testing.assert_close(loss, ce - (advantage * log_prob).mean())


def test_the_gates_read_activations_and_never_labels(data):
    x, y = data
    probs = []
    for labels in (y, (y + 1) % 4):
        model, _, scheduler = build(routing_schedule(policies=entry("{phase: reinforce}")))
        gate_inputs = []
        for g in Routing.of(model).set.gates:
            g.register_forward_pre_hook(lambda m, a: gate_inputs.append(a[0].shape))
        torch.manual_seed(0)
        _, _, _, trace = first_step(model, scheduler, x, labels)
        probs.append(torch.stack([r.prob.detach() for r in trace]))
        assert gate_inputs == [torch.Size([16, 8, 12, 12])] * 2 + [torch.Size([16, 16, 6, 6])]
    assert torch.equal(probs[0], probs[1])


def test_blockdrop_learns_its_policy_on_a_frozen_backbone(data):
    x, y = data
    model, optimizer, scheduler = build(routing_schedule("BlockDrop", policies=entry("{}", 0, 2)))
    routing = Routing.of(model).set
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("routing.")}
    policy = [p.detach().clone() for p in routing.parameters()]
    for epoch in range(2):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())  # weights and batch-norm statistics
    assert not all(torch.equal(a, b) for a, b in zip(policy, routing.parameters()))
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after the window


def test_joint_fine_tuning_trains_the_backbone_too(data):
    x, y = data
    model, optimizer, scheduler = build(routing_schedule("BlockDrop", policies=entry("{freeze_backbone: false}")))
    before = model.conv1.weight.detach().clone()
    model.train()
    one_epoch_of_one_step(model, optimizer, scheduler, 0, x, y)
    assert not torch.equal(before, model.conv1.weight)


@pytest.mark.parametrize("cls, args, where, message", [
    ("BlockDrop", "{hard: true}", "hard", "applies to SkipGates routing only"),
    ("SkipGates", "{penalty: -2}", "penalty", "applies to BlockDrop routing only"),
    ("BlockDrop", "{alpha: 0.3}", "alpha", "BlockDrop's exploration bound must be in [0.5, 1]"),
    ("BlockDrop", "{phase: supervised}", "phase", "BlockDrop is trained by reinforcement learning"),
    ("SkipGates", "{phase: reinforce, hard: false}", "hard", "the reinforce phase samples hard gates"),
    ("SkipGates", "{phase: superviced}", "phase", "did you mean 'supervised'?"),
    ("SkipGates", "{alpha: -1}", "alpha", "must be a number >= 0"),
    ("SkipGates", "{alpah: 1}", "alpah", "did you mean 'alpha'?"),
])
def test_bad_policy_arguments_are_located_errors(cls, args, where, message):
    with pytest.raises(ScheduleError) as err:
        build(routing_schedule(cls, policies=entry(args)))
    text = str(err.value)
    assert text.startswith("routing.yaml:") and f"policies[0].routing.args.{where}" in text and message in text


def test_a_bad_gate_kind_is_a_located_error():
    with pytest.raises(ScheduleError, match=r"routing.yaml:\d+: routing.r.gate: 'lstm' is not valid"):
        build(routing_schedule(extra="    gate: lstm"))


RL = {"SkipGates": "{phase: reinforce, alpha: 0.5}", "BlockDrop": "{curriculum_step: 1}"}


@pytest.mark.parametrize("cls", list(RL))
def test_resuming_in_the_middle_of_reinforcement_learning_equals_an_uninterrupted_run(cls, data, tmp_path):
    x, y = data
    text = routing_schedule(cls, policies=entry(RL[cls], 0, 4))

    def run(model, optimizer, scheduler, epochs):
        for epoch in epochs:
            model.train()
            one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)

    model, optimizer, scheduler = build(text)
    torch.manual_seed(7)
    run(model, optimizer, scheduler, range(4))
    uninterrupted = model.state_dict()

    model, optimizer, scheduler = build(text)
    torch.manual_seed(7)
    run(model, optimizer, scheduler, range(2))
    save_checkpoint(tmp_path / "mid.pth", model, optimizer=optimizer, scheduler=scheduler,
                    rng_state=torch.get_rng_state())
    torch.manual_seed(123)  # the resumed run must not depend on what happened after the checkpoint
    model, optimizer, scheduler = build(text, seed=99)
    state = load_checkpoint(model, tmp_path / "mid.pth", optimizer=optimizer, scheduler=scheduler)
    torch.set_rng_state(state.get("rng_state"))
    run(model, optimizer, scheduler, range(2, 4))
    resumed = model.state_dict()
    assert set(resumed) == set(uninterrupted)
    for k, v in uninterrupted.items():
        assert torch.equal(v, resumed[k]) if isinstance(v, torch.Tensor) else v == resumed[k], k


def test_a_checkpoint_rebuilds_the_routing_without_the_schedule(data, tmp_path):
    x, y = data
    model, optimizer, scheduler = build(routing_schedule("SkipGates", extra="    gate: rnn",
                                                         policies=entry("{}", 0, 1)))
    model.train()
    one_epoch_of_one_step(model, optimizer, scheduler, 0, x, y)
    save_checkpoint(tmp_path / "c.pth", model)
    fresh = TinyRes()
    load_checkpoint(fresh, tmp_path / "c.pth")
    routing = Routing.of(fresh)
    assert routing is not None and routing.kind == "SkipGates" and routing.set.active
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
