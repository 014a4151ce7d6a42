"""BlockDrop's equations against hand computations, and its policy gradient on a toy where dropping is free."""
import pytest
import torch
from torch import nn

from distill_ee.routing import Routing
from distill_ee.routing.blockdrop import block_reward, curriculum_blocks, exploration_bound
from routing_support import build, routing_schedule
from support import one_epoch_of_one_step


def test_the_exploration_bound_keeps_probabilities_within_alpha():
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    # 0.8 * s + 0.2 * (1 - s)
    assert exploration_bound(s, 0.8).tolist() == pytest.approx([0.2, 0.35, 0.5, 0.8])
    assert exploration_bound(s, 1.0).tolist() == pytest.approx(s.tolist())


def test_the_reward_is_one_minus_squared_usage_when_right_and_the_penalty_when_wrong():
    pattern = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.float)
    correct = torch.tensor([True, True, True, False])
    reward = block_reward(pattern, correct, penalty=-5.0)
    assert reward.tolist() == pytest.approx([0.0, 1 - (1 / 4) ** 2, 1.0, -5.0])


def test_the_curriculum_decides_one_more_of_the_last_blocks_every_step_epochs():
    assert [curriculum_blocks(t, 5, 1) for t in range(7)] == [1, 2, 3, 4, 5, 5, 5]
    assert [curriculum_blocks(t, 5, 2) for t in range(6)] == [1, 1, 2, 2, 3, 3]
    assert curriculum_blocks(0, 5, 0) == 5


def test_the_curriculum_keeps_the_earlier_blocks_without_a_decision(data):
    x, y = data
    model, optimizer, scheduler = build(routing_schedule("BlockDrop", policies="""
  - routing: {instance_name: r, args: {curriculum_step: 1}}
    starting_epoch: 0
    ending_epoch: 3"""))
    routing = Routing.of(model).set
    decided = []
    for epoch in range(3):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
        decided.append(routing.decided)
        forced = [r.forced for r in routing.trace]
        assert forced == [k < routing.num_blocks - routing.decided for k in range(routing.num_blocks)]
    assert decided == [1, 2, 3]


def test_the_self_critical_baseline_is_the_greedy_pattern_on_the_same_inputs(data, monkeypatch):
    x, y = data
    model, optimizer, scheduler = build(routing_schedule("BlockDrop", policies="""
  - routing: {instance_name: r, args: {curriculum_step: 0, entropy_weight: 0.0}}
    starting_epoch: 0
    ending_epoch: 1"""))
    policy = scheduler.policies[0]
    seen = {}
    original = policy._greedy_output

    def spy(ctx, inputs, pattern):
        out = original(ctx, inputs, pattern)
        seen.update(inputs=inputs, pattern=pattern, out=out)
        return out

    monkeypatch.setattr(policy, "_greedy_output", spy)
    scheduler.on_epoch_begin(0)
    model.train()
    scheduler.on_minibatch_begin(0, 0, 1)
    out = model(x)
    trace = list(Routing.of(model).set.trace)
    loss = scheduler.before_backward_pass(0, 0, 1, nn.functional.cross_entropy(out, y), target=y)
    assert torch.equal(seen["inputs"], x)
    greedy = torch.stack([(r.prob > 0.5).float() for r in trace], dim=1)
    assert torch.equal(seen["pattern"], greedy)
    # the hand-computed REINFORCE term: -(sum of log p(u) * (R(u) - R(greedy))) / N
    sampled = torch.stack([r.gate for r in trace], dim=1)
    advantage = block_reward(sampled, out.argmax(1) == y, -1.0) - block_reward(greedy, seen["out"].argmax(1) == y,
                                                                                -1.0)
    log_prob = torch.stack([r.log_prob for r in trace], dim=1)
    expected = nn.functional.cross_entropy(out, y) - (log_prob * advantage[:, None]).sum() / x.shape[0]
    torch.testing.assert_close(loss, expected)


def test_reinforce_lowers_keep_probabilities_when_the_cheapest_pattern_is_always_right(data):
    """Blocks whose residual branch adds nothing: every pattern predicts the same, so the reward only prices
    usage, and the policy must learn to drop."""
    x, _ = data
    model, optimizer, scheduler = build(routing_schedule("BlockDrop", policies="""
  - routing: {instance_name: r, args: {curriculum_step: 0}}
    starting_epoch: 0
    ending_epoch: 30"""), lr=0.05)
    routing = Routing.of(model).set
    with torch.no_grad():
        for name in routing.block_names:
            model.get_submodule(name).bn2.weight.zero_()  # residual branch output 0: block(x) == relu(x) == x
        y = model.eval()(x).argmax(dim=1)  # labels: what the network predicts whatever it skips

    def mean_keep():
        with torch.no_grad():
            return float(routing.policy_probabilities(x).mean())

    before = mean_keep()
    for epoch in range(30):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    after = mean_keep()
    assert after < before - 0.2
