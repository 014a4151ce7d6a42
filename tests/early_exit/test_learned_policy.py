"""Exit policies learned after the network (Bolukbasi et al., 2017): cost-sensitive deciders trained on
validation logits, taken for real, saved with the model."""
import pytest
import torch

import distill_ee
from distill_ee.early_exit.deciders import build_decider, default_head
from distill_ee.early_exit.learned_policy import fit_deciders, fit_exit_policy, policy_curve, tradeoff_grid
from distill_ee.early_exit.spec import parse_early_exit_config
from distill_ee.early_exit.tradeoff import ExitCosts
from distill_ee.errors import ConfigError, ScheduleError

LEARNED = """
version: 1
early_exits:
  ee:
    class: EarlyExit
    criterion: learned
    learned_policy: {tradeoff: 1.0}
    exits:
      exit1: {attach: conv1, branch: [adaptive_avgpool, flatten, linear]}
      exit2: {attach: conv2, branch: [adaptive_avgpool, flatten, linear]}
"""


def toy(n=600, seed=0):
    """Logits of two exits and a final classifier with known behaviour: exit 1 is right exactly on its
    confident samples, exit 2 is right on all but a tenth, the final classifier on all."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    confident = torch.rand(n, generator=gen) < 0.5
    wrong = (y + 1) % 4
    e1 = torch.randn(n, 4, generator=gen) * 0.1
    e1[torch.arange(n), torch.where(confident, y, wrong)] += torch.where(confident, 6.0, 0.3)
    e2 = torch.randn(n, 4, generator=gen) * 0.1
    right2 = torch.rand(n, generator=gen) > 0.1
    e2[torch.arange(n), torch.where(right2, y, wrong)] += torch.where(right2, 4.0, 0.2)
    final = torch.zeros(n, 4)
    final[torch.arange(n), y] = 5.0
    return [e1, e2, final], y, confident, right2


def deciders(count=2, classes=4):
    torch.manual_seed(0)
    head = default_head()
    return [build_decider(head, classes, exit_name=f"exit{k + 1}", path="head") for k in range(count)]


def test_deciders_learn_to_leave_where_leaving_costs_less():
    logits, y, confident, right2 = toy()
    ds = deciders()
    shares = fit_deciders(ds, logits, y, [0.2, 0.5, 1.0], tradeoff=1.0)
    with torch.no_grad():
        leave1 = ds[0](logits[0]) > 0.5
        leave2 = ds[1](logits[1]) > 0.5
    # exit 1: leaving is right exactly on the confident samples (1 + 0.2 > 0 + cost of going on otherwise)
    assert (leave1 == confident).float().mean() > 0.97
    # exit 2 leaves where it is confident (right); its unconfident (wrong) samples go on to the final classifier
    assert (leave2 == right2).float().mean() > 0.95
    assert shares[0] == pytest.approx(float(leave1.float().mean()))


def test_a_trade_off_of_zero_never_pays_accuracy_for_macs():
    logits, y, _, _ = toy()
    ds = deciders()
    fit_deciders(ds, logits, y, [0.2, 0.5, 1.0], tradeoff=0.0)
    criteria = [distill_ee.early_exit.deciders.LearnedPolicyCriterion(d) for d in ds]
    from distill_ee.early_exit.decisions import decide_exits
    with torch.no_grad():
        chosen, _ = decide_exits(logits, criteria, [0.5, 0.5])
    assert float((chosen.argmax(1) == y).float().mean()) > 0.99


def test_a_larger_trade_off_buys_fewer_macs_along_the_curve():
    logits, y, _, _ = toy()
    costs = ExitCosts([20.0, 50.0, 100.0], 100.0, [0.0, 0.0])
    curve = policy_curve(deciders(), logits, y, costs, [0.0, 1.0, 8.0], test_logits=logits, test_targets=y)
    macs = [p.valid.macs_fraction for p in curve]
    assert macs[0] >= macs[1] >= macs[2] and macs[0] > macs[2]
    assert curve[1].test is not None and curve[1].test.top1 == pytest.approx(curve[1].valid.top1)


def test_the_trade_off_grid_brackets_the_schedules_value():
    assert tradeoff_grid(1.0) == [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert 3.0 in tradeoff_grid(3.0) and tradeoff_grid(0.0)[0] == 0.0


@pytest.fixture
def fitted(ee):
    torch.manual_seed(0)
    model = ee.LeNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    distill_ee.schedule_from_text(model, optimizer, LEARNED, example_input=torch.zeros(1, 1, 28, 28))
    exits = distill_ee.EarlyExits.of(model)
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(32, 1, 28, 28, generator=gen), torch.randint(0, 10, (32,), generator=gen))
               for _ in range(4)]
    shares = fit_exit_policy(exits, batches, tradeoff=4.0)
    return model, exits, shares


def test_a_fitted_policy_is_taken_for_real_as_simulated(fitted):
    model, exits, shares = fitted
    multi = exits.multi_exit_model().eval()
    for batch in (1, 7, 256):
        x = torch.randn(batch, 1, 28, 28)
        logits, index = multi(x)
        want_logits, want_index = multi.decide(multi.simulate(x))
        assert torch.equal(index, want_index) and torch.allclose(logits, want_logits, atol=1e-6)
    assert len(shares) == 2


def test_a_fitted_policy_is_saved_and_restored_with_the_model(fitted, ee, tmp_path):
    model, exits, _ = fitted
    distill_ee.save_checkpoint(tmp_path / "p.pth.tar", model)
    fresh = ee.LeNet()
    distill_ee.load_checkpoint(fresh, tmp_path / "p.pth.tar")
    x = torch.randn(64, 1, 28, 28)
    a, b = exits.multi_exit_model().eval(), distill_ee.EarlyExits.of(fresh).multi_exit_model().eval()
    assert torch.equal(a(x)[1], b(x)[1])
    for name, param in model.early_exits.deciders.named_parameters():
        assert torch.equal(param, dict(fresh.early_exits.deciders.named_parameters())[name])


def test_a_policy_needs_exits_attached_with_the_learned_criterion(ee):
    model = ee.LeNet()
    ee.attach(model, ee.exits_config(["conv1"]))
    with pytest.raises(ConfigError, match="criterion: learned"):
        fit_exit_policy(distill_ee.EarlyExits.of(model), [])


@pytest.mark.parametrize("config,message", [
    ({"criterion": "entropy", "learned_policy": {"tradeoff": 1}}, "`learned_policy` applies to `criterion: learned`"),
    ({"criterion": "learned", "learned_policy": {"tradeoff": -1}}, "the trade-off must be >= 0"),
    ({"criterion": "learned", "learned_policy": {"tradeof": 1}}, "unknown key 'tradeof'"),
    ({"criterion": "gate", "gate": {"cost_weight": -0.1}}, "loss weights must be >= 0"),
    ({"criterion": "entropy", "gate": {}}, "`gate` applies to `criterion: gate`"),
    ({"criterion": "gate", "gate": {"head": "linear"}}, "a decider head is a non-empty list"),
])
def test_bad_learned_decision_blocks_are_located_errors(config, message):
    exits = {"exit1": {"attach": "conv1", "branch": ["flatten", "linear"]}}
    with pytest.raises(ScheduleError, match=message):
        parse_early_exit_config({**config, "exits": exits})


def test_learned_decisions_apply_to_every_exit():
    exits = {"exit1": {"attach": "conv1", "branch": ["flatten", "linear"], "criterion": "gate"}}
    with pytest.raises(ScheduleError, match="apply to every exit") as err:
        parse_early_exit_config({"criterion": "entropy", "exits": exits})
    assert err.value.path == "exits.exit1.criterion"


def test_a_decider_head_that_does_not_end_in_one_value_is_refused(ee):
    model = ee.LeNet()
    config = ee.exits_config(["conv1"], criterion="gate", gate={"head": ["confidence_features",
                                                                        {"type": "linear", "out_features": 3}]})
    with pytest.raises(ScheduleError, match=r"the decider head ends with shape \(N, 3\), but a decider head must "
                                            r"give \(N, 1\)"):
        ee.attach(model, config)


def test_confidence_features_are_sorted_probabilities_and_normalised_entropy():
    from distill_ee.early_exit.deciders import ConfidenceFeatures
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 5.0, 5.0]])
    feats = ConfidenceFeatures()(logits)
    probs = torch.softmax(logits, 1)
    assert torch.allclose(feats[:, :3], probs.sort(1, descending=True).values)
    assert feats[1, 3].item() == pytest.approx(1.0)  # uniform: entropy ln 3 / ln 3
    assert torch.allclose(ConfidenceFeatures()(logits[:, [2, 0, 1]]), feats)  # the order of classes does not matter
