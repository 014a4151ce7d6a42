"""Cascades: members run small to big, each only on the samples the ones before handed on."""
import pytest
import torch
from torch import nn

from distill_ee.cascade import Cascade, IDKCriterion, Member, choose_idk_thresholds, fit_idk, idk_objective
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.criteria import get_criterion
from distill_ee.early_exit.tradeoff import ExitCosts, Settings
from distill_ee.errors import ConfigError


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10))


def big():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))


def two(threshold=0.15):
    return Cascade([Member("little", small(), 160.0), Member("big", big(), 832.0)], [get_criterion("max_prob")],
                   [threshold])


def test_the_big_member_sees_only_the_rows_the_little_one_hands_on():
    cascade = two()
    rows = []
    cascade.members[1].model[1].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    x = torch.randn(200, 1, 4, 4)
    logits, index = cascade(x)
    handed = int((index == 1).sum())
    assert 0 < handed < 200 and rows == [handed]
    want_logits, want_index = cascade.decide(cascade.simulate(x))
    assert torch.equal(index, want_index) and torch.allclose(logits, want_logits)


def test_a_member_without_threshold_is_never_run():
    cascade = two(threshold=None)
    rows = []
    cascade.members[0].model[1].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    _, index = cascade(torch.randn(10, 1, 4, 4))
    assert rows == [] and (index == 1).all()


class Big(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.hidden, self.out = nn.Linear(16, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def test_a_member_with_exits_keeps_taking_them():
    model = Big()
    exits = EarlyExits.from_config({"exits": {"e1": {"attach": "hidden", "branch": ["linear"], "threshold": 1e9}}},
                                   model, num_classes=10, input_shape=(1, 4, 4))
    reached = []
    model.out.register_forward_pre_hook(lambda m, args: reached.append(args[0].shape[0]))
    cascade = Cascade([Member("little", small(), 160.0), Member("big", model, 832.0)], [get_criterion("max_prob")],
                      [1.1])  # the little one never answers
    reached.clear()  # building the member's multi-exit model ran it on a dummy batch
    _, index = cascade(torch.randn(12, 1, 4, 4))
    assert (index == 1).all() and reached == []  # every sample left at the big member's own exit
    assert cascade.members[1].has_exits and exits.thresholds == [1e9]


def test_costs_add_up_the_members_run_and_take_the_last_alone_as_100_percent():
    costs = two().costs()
    assert costs.macs_per_exit == [160.0, 992.0] and costs.full_macs == 832.0
    with pytest.raises(ConfigError, match="not been measured"):
        two().costs("seconds")
    with pytest.raises(ConfigError, match="at least two members"):
        Cascade([Member("only", small(), 1.0)], [], [])


def test_the_idk_objective_is_error_plus_beta_times_relative_cost():
    # two settings on 10 samples: 9 right at a cost of 300 (of a 1000 last member), 10 right at 1100
    settings = Settings(index=torch.tensor([[0], [1]]), correct=torch.tensor([9.0, 10.0], dtype=torch.float64),
                        counts=torch.zeros(2, 2, dtype=torch.float64),
                        macs=torch.tensor([300.0, 1100.0], dtype=torch.float64))
    objective = idk_objective(settings, 10, 1000.0, beta=0.2)
    assert objective.tolist() == pytest.approx([0.1 + 0.2 * 0.3, 0.0 + 0.2 * 1.1])  # 0.16 and 0.22
    assert idk_objective(settings, 10, 1000.0, beta=0.05).argmin() == 1  # cheap compute: the big one wins


def test_an_idk_classifier_learns_when_the_member_is_wrong_and_the_objective_picks_the_threshold():
    torch.manual_seed(0)
    n = 400
    targets = torch.randint(0, 10, (n,))
    confident = torch.rand(n) < 0.6  # the little member is sure (and right) on 60%, unsure (and often wrong) else
    little = torch.randn(n, 10) * 0.3
    little[confident, targets[confident]] += 6.0
    wrong = (~confident).nonzero().squeeze(1)
    little[wrong, (targets[wrong] + 1) % 10] += 0.5
    bigger = torch.randn(n, 10) * 0.3
    bigger[torch.arange(n), targets] += 4.0
    idk = fit_idk(little, targets)
    with torch.no_grad():
        p_right = idk(little)
    assert float(p_right[confident].mean()) > 0.9 > 0.3 > float(p_right[~confident].mean())
    costs = ExitCosts([100.0, 1100.0], 1000.0, None)
    thresholds, objective, _, _ = choose_idk_thresholds([little, bigger], targets, [IDKCriterion(idk)], costs, 0.1)
    answered = IDKCriterion(idk).exit_mask(little, thresholds[0])
    assert answered[confident].float().mean() > 0.95 and answered[~confident].float().mean() < 0.05
    assert objective == pytest.approx(0.0 + 0.1 * (100.0 + 0.4 * 1000.0) / 1000.0, abs=0.01)
    with pytest.raises(ConfigError, match="beta"):
        choose_idk_thresholds([little, bigger], targets, [IDKCriterion(idk)], costs, -1.0)
