"""The early-exit policy and the exits it trains: joint loss, weights over epochs, hooks only when due, and exits
that rebuild from a checkpoint without the schedule."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_ee.checkpoint import checkpoint_state, load_checkpoint
from distill_ee.early_exit.exits import EarlyExits
from distill_ee.errors import CheckpointError, DistillEEError, ScheduleError
from distill_ee.policies.base import HookContext
from distill_ee.policies.early_exit import EarlyExitPolicy
from distill_ee.registry import EARLY_EXITS
from distill_ee.scheduler import CompressionScheduler

SHAPE = (1, 16, 16)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def config(**extra):
    return {"exits": {
        "exit1": {"attach": "conv1", "branch": [{"type": "maxpool", "kernel_size": 4}, "flatten", "linear"],
                  "loss_weight": 0.3, "threshold": 1.0},
        "exit2": {"attach": "conv2", "branch": ["adaptive_avgpool", "flatten", "linear"],
                  "loss_weight": {"start": 0.1, "end": 0.5}, "threshold": 1.5},
    }, **extra}


def make(cfg=None, seed=0):
    torch.manual_seed(seed)
    model = SmallNet()
    exits = EarlyExits.from_config(cfg or config(), model, num_classes=10, input_shape=SHAPE, name="branchy")
    policy = EarlyExitPolicy(exits)
    policy.set_window(0, 5, 1)
    return model, policy


def batch(n=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def training_step(model, policy, epoch, x, y):
    ctx = HookContext(epoch=epoch, model=model)
    policy.on_epoch_begin(ctx)
    out = model(x)
    ctx.loss, ctx.target = F.cross_entropy(out, y), y
    return policy.before_backward_pass(ctx), ctx.loss


def exit_losses(model, x, y):
    """Each exit's cross-entropy computed by hand from the attach modules' outputs."""
    a1 = model.conv1(x)
    a2 = model.conv2(F.max_pool2d(F.relu(a1), 2))
    return [F.cross_entropy(model.early_exits.exit1(a1), y), F.cross_entropy(model.early_exits.exit2(a2), y)]


def test_the_exits_are_registered_for_schedules_and_the_policy_trains_them():
    assert EARLY_EXITS.get("EarlyExit") is EarlyExits
    assert EarlyExitPolicy.kind == "early_exit"
    _, policy = make()
    assert policy.name == "branchy" and policy.exits.name == "branchy"


def test_attaching_keeps_backbone_names_and_exposes_branch_parameters():
    names = [n for n, _ in SmallNet().named_parameters()]
    model, policy = make()
    assert [n for n, _ in model.named_parameters()][:len(names)] == names
    assert {id(p) for p in policy.exits.branch_parameters()} == {id(p) for p in model.early_exits.parameters()}
    opt = torch.optim.SGD(SmallNet().parameters(), lr=0.1)
    opt.add_param_group({"params": policy.exits.branch_parameters()})
    assert policy.exits.exit_names == ["exit1", "exit2"] and policy.exits.output_names == ["exit1", "exit2", "final"]


def test_joint_loss_is_the_weighted_sum_of_final_and_exit_losses():
    model, policy = make()
    x, y = batch()
    result, final_loss = training_step(model, policy, 0, x, y)
    ce1, ce2 = exit_losses(model, x, y)
    expected = 1.0 * final_loss + 0.3 * ce1 + 0.1 * ce2
    assert result.overall_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    names = [c.name for c in result.loss_components]
    assert names == ["exit1_loss", "exit2_loss"]
    assert result.loss_components[0].value.item() == pytest.approx(0.3 * ce1.item(), rel=1e-5)


def test_auto_final_weight_and_ramped_exit_weights_follow_the_epochs():
    model, policy = make(config(final_loss_weight="auto"))
    assert policy.loss_weights(0) == (pytest.approx([0.3, 0.1]), pytest.approx(0.6))
    assert policy.loss_weights(2) == (pytest.approx([0.3, 0.3]), pytest.approx(0.4))
    assert policy.loss_weights(4) == (pytest.approx([0.3, 0.5]), pytest.approx(0.2))
    x, y = batch()
    result, final_loss = training_step(model, policy, 4, x, y)
    ce1, ce2 = exit_losses(model, x, y)
    expected = 0.2 * final_loss + 0.3 * ce1 + 0.5 * ce2
    assert result.overall_loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_backward_reaches_branches_and_backbone():
    model, policy = make()
    x, y = batch()
    result, _ = training_step(model, policy, 0, x, y)
    result.overall_loss.backward()
    assert all(p.grad is not None for p in policy.exits.branch_parameters())
    assert model.conv1.weight.grad is not None


def test_epoch_metrics_average_each_exits_loss_and_accuracy_then_reset():
    model, policy = make()
    x, y = batch(8)
    training_step(model, policy, 0, x, y)
    training_step(model, policy, 0, x, y)
    with torch.no_grad():
        ce1, ce2 = exit_losses(model, x, y)
        top1 = 100.0 * float((model.early_exits.exit1(model.conv1(x)).argmax(1) == y).float().mean())
    metrics = policy.epoch_metrics()
    assert set(metrics) == {"exit1_loss", "exit1_top1", "exit2_loss", "exit2_top1"}
    assert metrics["exit1_loss"] == pytest.approx(ce1.item(), rel=1e-5)
    assert metrics["exit2_loss"] == pytest.approx(ce2.item(), rel=1e-5)
    assert metrics["exit1_top1"] == pytest.approx(top1)
    assert policy.epoch_metrics() == {}


def test_branches_cost_nothing_outside_due_epochs():
    model, policy = make()
    calls = []
    model.early_exits.exit1.register_forward_hook(lambda *a: calls.append(1))
    scheduler = CompressionScheduler(model)
    scheduler.add_policy(policy, epochs=[1])
    x, y = batch()
    for epoch in range(3):
        scheduler.on_epoch_begin(epoch)
        scheduler.on_minibatch_begin(epoch, 0, 1)
        loss = F.cross_entropy(model(x), y)
        scheduler.before_backward_pass(epoch, 0, 1, loss, target=y)
        scheduler.on_minibatch_end(epoch, 0, 1)
        scheduler.on_epoch_end(epoch)
        assert len(calls) == (1 if epoch >= 1 else 0)


def test_missing_target_is_a_clear_error():
    model, policy = make()
    policy.on_epoch_begin(HookContext(epoch=0, model=model))
    x, _ = batch()
    with pytest.raises(DistillEEError, match="target"):
        policy.before_backward_pass(HookContext(epoch=0, model=model, loss=model(x).sum()))


def test_a_bad_attach_point_is_a_schedule_error_with_its_path():
    cfg = config()
    cfg["exits"]["exit2"]["attach"] = "conv3"
    with pytest.raises(ScheduleError) as info:
        make(cfg)
    assert info.value.path == "exits.exit2.attach" and "conv1" in info.value.suggestions


def test_a_checkpoint_rebuilds_exits_with_identical_outputs_without_the_schedule():
    model, policy = make()
    x, y = batch(32)
    training_step(model, policy, 0, x, y)[0].overall_loss.backward()
    with torch.no_grad():
        for p in policy.exits.branch_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    policy.exits.set_thresholds({"exit1": 2.2})
    buffer = io.BytesIO()
    torch.save(checkpoint_state(model), buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    fresh = SmallNet()
    restored = load_checkpoint(fresh, checkpoint)
    (rebuilt,) = restored.replayed
    assert rebuilt.thresholds == [2.2, 1.5] and rebuilt.criteria == ["entropy", "entropy"]
    assert EarlyExits.of(fresh).thresholds == [2.2, 1.5]
    original, again = policy.exits.multi_exit_model().eval(), rebuilt.multi_exit_model().eval()
    for a, b in zip(original.simulate(x), again.simulate(x)):
        assert torch.equal(a, b)
    (logits, index), (logits2, index2) = original(x), again(x)
    assert torch.equal(index, index2) and torch.equal(logits, logits2)


def test_thresholds_and_criteria_travel_with_the_models_own_state_dict():
    model, policy = make()
    policy.exits.set_thresholds([0.5, None])
    state = model.state_dict()
    assert state["early_exits._extra_state"] == {"criteria": ["entropy", "entropy"], "thresholds": [0.5, None]}
    other, _ = make()
    other.load_state_dict(state)
    assert EarlyExits.of(other).thresholds == [0.5, None]


def test_a_checkpoint_whose_exits_do_not_fit_is_a_checkpoint_error():
    model, _ = make()
    state = checkpoint_state(model)
    broken = copy.deepcopy(state)
    broken["structure"][0]["config"]["exits"]["exit1"]["attach"] = "nope"
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(SmallNet(), broken)
    bad_state = copy.deepcopy(state)
    bad_state["state_dict"]["early_exits._extra_state"] = {"criteria": ["entropy"], "thresholds": [1.0]}
    with pytest.raises(CheckpointError, match="saved exits do not fit"):
        load_checkpoint(SmallNet(), bad_state)


def test_multi_exit_model_of_a_copy_uses_the_copys_branches():
    model, policy = make()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.early_exits.exit1[2].weight.zero_()
    multi = policy.exits.multi_exit_model(twin)
    assert multi.branches[0] is twin.early_exits.exit1
    assert multi.stages[0].conv1 is twin.conv1


def test_evaluate_reports_rows_and_ignores_labels_for_decisions():
    model, policy = make()
    x, y = batch(64)
    rows = policy.exits.evaluate([(x, y)])
    assert [r["name"] for r in rows] == ["exit1", "exit2", "final"]
    assert sum(r["taken_pct"] for r in rows) == pytest.approx(100.0)
    assert rows[0]["macs"] < rows[1]["macs"] < rows[2]["macs"]
    shuffled = policy.exits.evaluate([(x, y[torch.randperm(64)])])
    assert [r["taken_pct"] for r in rows] == [r["taken_pct"] for r in shuffled]


def test_detach_leaves_the_plain_model():
    model, policy = make()
    policy.exits.detach()
    assert not hasattr(model, "early_exits")
    assert model(batch()[0]).shape == (8, 10)


def test_thresholds_are_set_by_name_or_list_and_checked():
    _, policy = make()
    policy.exits.set_thresholds({"exit2": 0.25})
    assert policy.exits.thresholds == [1.0, 0.25]
    policy.exits.set_thresholds([None, 2.0])
    assert policy.exits.thresholds == [None, 2.0]
    with pytest.raises(DistillEEError, match="exit1"):
        policy.exits.set_thresholds([-1.0, 2.0])
    with pytest.raises(DistillEEError):
        policy.exits.set_thresholds({"exit3": 0.1})


def test_terms_added_by_an_earlier_policy_are_not_scaled_by_the_final_exit_weight():
    from distill_ee.policies.base import LossComponent, Policy, PolicyLoss

    class AddConstant(Policy):
        kind = "constant"

        def before_backward_pass(self, ctx):
            term = torch.tensor(2.0)
            return PolicyLoss(ctx.loss + term, [LossComponent("constant", term)])

    model, policy = make(config(final_loss_weight=0.25))
    sched = CompressionScheduler(model)
    sched.add_policy(AddConstant("c"), epochs=[0])
    sched.add_policy(policy, epochs=[0])
    x, y = batch()
    sched.on_epoch_begin(0)
    task = F.cross_entropy(model(x), y)
    out = sched.before_backward_pass(0, 0, 1, task, return_loss_components=True, target=y)
    exits = sum(float(c.value.detach()) for c in out.loss_components if c.name.startswith("exit"))
    assert float(out.overall_loss.detach()) == pytest.approx(2.0 + 0.25 * float(task.detach()) + exits, rel=1e-5)


def test_a_schedule_prunes_exit_branches_only_when_it_names_them():
    from distill_ee.schedule import schedule_from_text

    torch.manual_seed(0)
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    text = """
early_exits:
  branchy:
    class: EarlyExit
    exits:
      exit1: {attach: conv1, branch: [{type: maxpool, kernel_size: 4}, flatten, linear], threshold: 1.0}
pruners:
  backbone:
    class: SparsityLevelParameterPruner
    levels: {conv2.weight: 0.5, fc.weight: 0.5}
  branches:
    class: SparsityLevelParameterPruner
    levels: {'early_exits.*.weight': 0.5}
policies:
  - early_exit: {instance_name: branchy}
    epochs: [0]
  - pruner: {instance_name: backbone}
    epochs: [0]
"""
    sched = schedule_from_text(model, opt, text, example_input=torch.zeros(1, *SHAPE))
    sched.on_epoch_begin(0)
    assert float((model.conv2.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert not torch.any(model.early_exits["exit1"][2].weight == 0)  # branch left alone
    with_branches = text + "  - pruner: {instance_name: branches}\n    epochs: [0]\n"
    torch.manual_seed(0)
    model = SmallNet()
    sched = schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), with_branches,
                               example_input=torch.zeros(1, *SHAPE))
    sched.on_epoch_begin(0)
    branch_weight = model.early_exits["exit1"][2].weight
    assert float((branch_weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


TWO_STAGE = """
version: 1
early_exits:
  exits:
    class: EarlyExit
    exits:
      exit1:
        attach: layer1.1
        branch: [{type: conv, out_channels: 8, kernel_size: 3, padding: 1}, bn, relu,
                 {type: adaptive_avgpool, output_size: 1}, flatten, {type: linear}]
        threshold: 0.5
policies:
  - early_exit: {instance_name: exits, args: {freeze_backbone: true}}
    starting_epoch: 0
    ending_epoch: 3
"""


def test_two_stage_exit_training_leaves_the_backbone_bit_identical():
    from routing_support import INPUT, build
    from support import one_epoch_of_one_step
    model, optimizer, scheduler = build(TWO_STAGE)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    backbone = {k: v.clone() for k, v in state.items() if not k.startswith("early_exits.")}
    branch = {k: v.clone() for k, v in state.items() if k.startswith("early_exits.")}
    gen = torch.Generator().manual_seed(0)
    for epoch in range(3):
        model.train()
        x, y = torch.randn(16, *INPUT, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())  # weights and batch-norm statistics
    assert not all(torch.equal(v, after[k]) for k, v in branch.items() if v.is_floating_point())
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_freeze_backbone_is_a_checked_policy_argument():
    from routing_support import build
    from distill_ee.errors import ScheduleError
    with pytest.raises(ScheduleError, match=r"policies\[0\].early_exit.args.freeze_backbone: must be true or false"):
        build(TWO_STAGE.replace("freeze_backbone: true", "freeze_backbone: 3"))
