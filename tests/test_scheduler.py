"""CompressionScheduler: which policies run when, in which order, and what they may change."""
from typing import List

import pytest
import torch
from torch import nn

from distill_ee.policies.base import HookContext, LossComponent, Policy, PolicyLoss
from distill_ee.errors import ConfigError
from distill_ee.scheduler import CompressionScheduler


class Recorder(Policy):
    """Records every hook call as (name, hook, epoch, minibatch)."""

    kind = "recorder"

    def __init__(self, name: str, log: List[tuple], extra_loss: float = 0.0):
        super().__init__(name)
        self.log = log
        self.extra_loss = extra_loss

    def on_epoch_begin(self, ctx: HookContext) -> None:
        self.log.append((self.name, "epoch_begin", ctx.epoch, None))

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        self.log.append((self.name, "minibatch_begin", ctx.epoch, ctx.minibatch_id))

    def before_backward_pass(self, ctx: HookContext):
        self.log.append((self.name, "before_backward", ctx.epoch, ctx.minibatch_id))
        if not self.extra_loss:
            return None
        term = torch.tensor(self.extra_loss)
        return PolicyLoss(ctx.loss + term, [LossComponent(f"{self.name}_loss", term)])

    def on_epoch_end(self, ctx: HookContext) -> None:
        self.log.append((self.name, "epoch_end", ctx.epoch, dict(ctx.metrics)))

    def state_dict(self):
        return {"calls": len(self.log)}


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3))


def test_policy_runs_only_in_its_epochs():
    log: List[tuple] = []
    sched = CompressionScheduler(tiny_model())
    sched.add_policy(Recorder("a", log), starting_epoch=1, ending_epoch=6, frequency=2)
    for epoch in range(7):
        sched.on_epoch_begin(epoch)
    assert [e for (_, hook, e, _) in log if hook == "epoch_begin"] == [1, 3, 5]


def test_epochs_list_and_range_metadata_reach_the_policy():
    sched = CompressionScheduler(tiny_model())
    a, b = Recorder("a", []), Recorder("b", [])
    sched.add_policy(a, epochs=[4, 2, 9])
    sched.add_policy(b, starting_epoch=3, ending_epoch=8, frequency=2)
    assert (a.starting_epoch, a.ending_epoch, a.frequency) == (2, 10, None)
    assert (b.starting_epoch, b.ending_epoch, b.frequency) == (3, 8, 2)
    assert sched.policies_for(4) == [a]
    assert sched.policies_for(5) == [b]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give epochs=[...] or both starting_epoch and ending_epoch (Distiller would schedule epoch 0 only)"),
    ({"starting_epoch": 2}, "give epochs=[...] or both starting_epoch and ending_epoch"),
    ({"epochs": [1, 2], "starting_epoch": 0}, "give epochs or a starting_epoch/ending_epoch window, not both "
                                              "(starting_epoch given too)"),
    ({"epochs": [1], "frequency": 2}, "not both (frequency given too)"),
    ({"epochs": []}, "epochs is empty"),
    ({"epochs": [1, -1]}, "epochs takes whole numbers of at least 0, got -1"),
    ({"epochs": [1.5]}, "epochs takes whole numbers of at least 0, got 1.5"),
    ({"starting_epoch": 4, "ending_epoch": 4}, "empty window: range(4, 4, 1)"),
    ({"starting_epoch": 0, "ending_epoch": 4, "frequency": 0}, "frequency at least 1"),
])
def test_an_ambiguous_or_empty_add_policy_is_refused_with_one_line(kwargs, message):
    sched = CompressionScheduler(tiny_model())
    with pytest.raises(ConfigError) as err:
        sched.add_policy(Recorder("a", []), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert sched.policies == []


def test_numpy_epoch_numbers_are_taken():
    import numpy as np
    sched = CompressionScheduler(tiny_model())
    sched.add_policy(Recorder("a", []), epochs=np.arange(3))
    assert sched.policies_for(2) and not sched.policies_for(3)


def test_policies_due_in_the_same_epoch_run_in_declaration_order():
    log: List[tuple] = []
    sched = CompressionScheduler(tiny_model())
    for name in ("first", "second", "third"):
        sched.add_policy(Recorder(name, log), epochs=[0])
    sched.on_epoch_begin(0)
    sched.on_minibatch_begin(0, 0, 1)
    assert [n for (n, _, _, _) in log] == ["first", "second", "third"] * 2


def test_before_backward_pass_chains_losses_and_reports_components():
    sched = CompressionScheduler(tiny_model())
    sched.add_policy(Recorder("a", [], extra_loss=1.5), epochs=[0])
    sched.add_policy(Recorder("b", [], extra_loss=0.25), epochs=[0, 1])
    sched.on_epoch_begin(0)
    out = sched.before_backward_pass(0, 0, 1, torch.tensor(2.0), return_loss_components=True)
    assert float(out.overall_loss) == pytest.approx(3.75)
    assert [c.name for c in out.loss_components] == ["a_loss", "b_loss"]
    sched.on_epoch_begin(1)
    plain = sched.before_backward_pass(1, 0, 1, torch.tensor(2.0))
    assert float(plain) == pytest.approx(2.25)


def test_epoch_end_receives_validation_metrics():
    log: List[tuple] = []
    sched = CompressionScheduler(tiny_model())
    sched.add_policy(Recorder("a", log), epochs=[0])
    sched.on_epoch_end(0, metrics={"min": 0.3, "max": 91.0})
    assert log == [("a", "epoch_end", 0, {"min": 0.3, "max": 91.0})]


def test_masks_are_applied_at_minibatch_begin_and_after_the_optimizer_step():
    model = tiny_model()
    sched = CompressionScheduler(model)
    weight = model[0].weight
    mask = torch.ones_like(weight)
    mask[0] = 0
    sched.masks["0.weight"].mask = mask
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for step in range(3):
        sched.on_minibatch_begin(0, step, 3, opt)
        assert torch.all(weight[0] == 0)
        loss = model(torch.randn(8, 4)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.on_minibatch_end(0, step, 3, opt)
        assert torch.all(weight[0] == 0)
    assert torch.all(weight[1:] != 0)


def test_state_dict_holds_masks_and_policy_states_and_rejects_another_schedule():
    from distill_ee.errors import CheckpointError

    model = tiny_model()
    sched = CompressionScheduler(model)
    sched.add_policy(Recorder("a", [("x",)]), epochs=[0])
    sched.masks["0.weight"].mask = torch.zeros(3, 4)
    state = sched.state_dict()
    assert state["policies"] == {"0:recorder:a": {"calls": 1}}
    assert torch.equal(state["masks"]["0.weight"]["mask"], torch.zeros(3, 4))

    other = CompressionScheduler(tiny_model())
    other.add_policy(Recorder("b", []), epochs=[0])
    with pytest.raises(CheckpointError, match="does not match"):
        other.load_state_dict(state)

    same = CompressionScheduler(model2 := tiny_model())
    same.add_policy(Recorder("a", []), epochs=[0])
    same.load_state_dict(state)
    assert torch.all(model2[0].weight == 0)
