"""Threshold calibration on the validation split: targets, optimality on cached logits, policies, and an honest
check that thresholds calibrated on validation keep their promise on the test split."""
import json
import logging

import pytest
import torch
import torch.nn.functional as F
import yaml

from distill_ee.apputils.calibration import parse_target, run_calibration
from distill_ee.early_exit.calibrate import calibrate, calibrate_exits, yaml_float
from distill_ee.early_exit.criteria import get_criterion
from distill_ee.early_exit.stats import expected_macs, overall_top1
from distill_ee.early_exit import tradeoff
from distill_ee.early_exit.tradeoff import ExitCosts
from distill_ee.errors import ConfigError
from distill_ee.early_exit.exits import EarlyExits
from distill_ee.policies.base import HookContext
from distill_ee.policies.early_exit import EarlyExitPolicy
from support import synthetic


MACS = [30.0, 70.0, 110.0]  # exit1, exit2, final (branches of 5 MACs each included)
BRANCHES = [5.0, 5.0]


# --------------------------------------------------------------------------- optimality on cached logits
def hand_made():
    """One exit, four samples. By exit confidence: s0 (right), s3 (wrong), s1 (right), s2 (right); the final
    classifier is right on all. Leaving at the exit costs 10 MACs, the final 100."""
    exit_logits = torch.tensor([[4.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 1])
    final = torch.tensor([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    return [exit_logits, final], targets


@pytest.mark.parametrize("target, taken, top1", [
    ("drop=0", [25.0, 75.0], 100.0),      # only s0 may leave: s3 would cost a point
    ("drop=25", [100.0, 0.0], 75.0),      # one wrong sample of four is allowed: everyone leaves
    ("macs=0.8", [25.0, 75.0], 100.0),    # 77.5 MACs: the most accurate setting within 80
    ("macs=0.3", [100.0, 0.0], 75.0),     # within 30 MACs only "all leave" (10 MACs) fits
])
def test_the_search_finds_the_known_optimum_of_a_hand_made_example(target, taken, top1):
    logits, targets = hand_made()
    result = calibrate(logits, targets, ["max_prob"], [10.0, 100.0], 100.0, parse_target(target))
    assert result.taken_pct == pytest.approx(taken)
    assert result.top1 == pytest.approx(top1)
    assert result.final_top1 == 100.0


def every_decision_set(criterion, logits):
    """(threshold, exit mask) letting out each top-m of the samples by confidence, m = 0..N, by the
    criterion's own rule - an oracle independent of the search's candidates and bookkeeping."""
    crit = get_criterion(criterion)
    conf = crit.confidence(logits).double().tolist()
    floor = float(crit.confidence(torch.zeros(1, logits.shape[1]))[0])
    values = [crit.threshold_for(c) for c in conf + [floor]]
    sets = [(None, torch.zeros(logits.shape[0], dtype=torch.bool))]
    return sets + [(v, crit.exit_mask(logits, v)) for v in values if crit.check_threshold(v) is None]


def brute_force(logits, targets, criterion, costs, feasible, better):
    """The best (top1, expected MACs) over every pair of decision sets of two exits, exhaustively."""
    right = [(l.argmax(dim=1) == targets).double() for l in logits]
    first, second = every_decision_set(criterion, logits[0]), every_decision_set(criterion, logits[1])
    m1 = torch.stack([m for _, m in first]).unsqueeze(1)  # (A, 1, N)
    m2 = torch.stack([m for _, m in second]).unsqueeze(0)  # (1, B, N)
    at2, final = m2 & ~m1, ~m1 & ~m2
    n = targets.shape[0]
    top1 = 100.0 * ((m1 * right[0]).sum(-1) + (at2 * right[1]).sum(-1) + (final * right[2]).sum(-1)) / n
    on1 = torch.tensor([t is not None for t, _ in first], dtype=torch.float64).unsqueeze(1)
    on2 = torch.tensor([t is not None for t, _ in second], dtype=torch.float64).unsqueeze(0)
    b1, b2 = costs.branch_macs
    cost1 = costs.macs_per_exit[0]
    cost2 = costs.macs_per_exit[1] - (1 - on1) * b1
    cost_final = costs.macs_per_exit[2] - (1 - on1) * b1 - (1 - on2) * b2
    macs = (m1.sum(-1) * cost1 + at2.sum(-1) * cost2 + final.sum(-1) * cost_final) / n
    best = None
    for top, cost in zip(top1.reshape(-1).tolist(), macs.reshape(-1).tolist()):
        if feasible(top, cost) and (best is None or better((top, cost), best)):
            best = (top, cost)
    return best


@pytest.mark.parametrize("criterion", ["entropy", "max_prob"])
def test_the_grid_matches_an_exhaustive_search_for_a_drop_target(criterion):
    logits, targets = synthetic(n=40, seed=3)
    costs = ExitCosts(MACS, 100.0, BRANCHES)
    result = calibrate(logits, targets, criterion, MACS, 100.0, parse_target("drop=5"), branch_macs=BRANCHES,
                       candidates=60)
    floor = result.final_top1 - 5.0 - 1e-9
    top1, macs = brute_force(logits, targets, criterion, costs, lambda t, m: t >= floor,
                             lambda p, b: (p[1], -p[0]) < (b[1], -b[0]))
    assert result.expected_macs == pytest.approx(macs)
    assert result.top1 == pytest.approx(top1)
    assert result.drop <= 5.0 + 1e-9


def test_the_grid_matches_an_exhaustive_search_for_a_macs_budget():
    logits, targets = synthetic(n=40, seed=4)
    costs = ExitCosts(MACS, 100.0, BRANCHES)
    result = calibrate(logits, targets, "margin", MACS, 100.0, parse_target("macs=0.5"), branch_macs=BRANCHES,
                       candidates=60)
    top1, macs = brute_force(logits, targets, "margin", costs, lambda t, m: m <= 50.0 + 1e-9,
                             lambda p, b: (p[0], -p[1]) > (b[0], -b[1]))
    assert result.top1 == pytest.approx(top1)
    assert result.expected_macs == pytest.approx(macs)


@pytest.mark.parametrize("budget", [0.35, 0.5, 0.7, 0.9])
def test_a_macs_budget_is_respected(budget):
    logits, targets = synthetic(n=1000)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, parse_target(f"macs={budget}"),
                       branch_macs=BRANCHES)
    assert result.macs_fraction <= budget + 1e-12
    assert result.expected_macs == pytest.approx(result.macs_fraction * 100.0)


def test_a_looser_budget_never_gives_lower_accuracy():
    logits, targets = synthetic(n=1000)
    tops = [calibrate(logits, targets, "entropy", MACS, 100.0, parse_target(f"macs={b}"),
                      branch_macs=BRANCHES).top1
            for b in (0.4, 0.6, 0.8, 1.0)]
    assert tops == sorted(tops)


def test_an_impossible_budget_is_a_config_error():
    logits, targets = synthetic(n=200)
    with pytest.raises(ConfigError, match="cheapest searched costs 30.0%"):
        calibrate(logits, targets, "entropy", MACS, 100.0, parse_target("macs=0.2"), branch_macs=BRANCHES)


def test_proportions_give_the_requested_shares_of_samples():
    logits, targets = synthetic(n=1000)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, parse_target("proportions=0.5,0.3"))
    assert result.taken_pct == pytest.approx([50.0, 30.0, 20.0])
    skip_first = calibrate(logits, targets, "max_prob", MACS, 100.0, parse_target("proportions=0,0.4"))
    assert skip_first.thresholds[0] is None
    assert skip_first.taken_pct == pytest.approx([0.0, 40.0, 60.0])


def test_proportions_need_one_share_per_early_exit():
    logits, targets = synthetic(n=100)
    with pytest.raises(ConfigError, match="one share per early exit"):
        calibrate(logits, targets, "entropy", MACS, 100.0, parse_target("proportions=0.5"))


def test_patience_is_refused_with_a_clear_message():
    logits, targets = synthetic(n=100)
    with pytest.raises(ConfigError, match="patience.*integer count"):
        calibrate(logits, targets, ["entropy", "patience"], MACS, 100.0, parse_target("drop=1"))


def test_a_search_over_thousands_of_settings_completes():
    logits, targets = synthetic(n=2000)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, parse_target("drop=0.5"),
                       branch_macs=BRANCHES)
    assert result.settings_searched >= 5000
    assert result.drop <= 0.5 + 1e-9
    assert result.macs_fraction < 1.0
    assert result.seconds > 0


@pytest.mark.parametrize("target", ["drop=1", "macs=0.6"])
def test_beyond_the_grid_a_seeded_descent_finds_the_grid_optimum_here(target, monkeypatch):
    logits, targets = synthetic(n=1000, strengths=(1.0, 1.5, 2.0, 2.5, 4.0))
    macs, branches = [20.0, 40.0, 60.0, 80.0, 104.0], [1.0] * 4
    target = parse_target(target)
    grid = calibrate(logits, targets, "entropy", macs, 100.0, target, branch_macs=branches, candidates=20)
    monkeypatch.setattr(tradeoff, "MAX_GRID_SETTINGS", 1000)  # four exits of 21 candidates no longer fit
    descent = calibrate(logits, targets, "entropy", macs, 100.0, target, branch_macs=branches, candidates=20)
    assert 5000 <= descent.settings_searched < grid.settings_searched
    assert (descent.top1, descent.expected_macs) == pytest.approx((grid.top1, grid.expected_macs))
    assert len(descent.front) > 5


def test_temperatures_are_fitted_per_exit_and_reported():
    logits, targets = synthetic(n=1000)
    hot = [logits[0] * 4.0, logits[1] * 4.0, logits[2]]
    result = calibrate(hot, targets, "entropy", MACS, 100.0, parse_target("drop=1"), temperature=True)
    assert len(result.temperatures) == 2 and all(t > 1.5 for t in result.temperatures)
    assert result.drop <= 1.0 + 1e-9
    assert calibrate(hot, targets, "entropy", MACS, 100.0, parse_target("drop=1")).temperatures is None


# --------------------------------------------------------------------------- result
def test_the_yaml_snippet_reads_back_as_the_thresholds():
    logits, targets = synthetic(n=500)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, parse_target("proportions=0,0.5"))
    snippet = result.yaml_snippet(["early", "late"])
    parsed = yaml.safe_load(snippet)
    assert parsed == {"exits": {"early": {"threshold": None}, "late": {"threshold": result.thresholds[1]}}}
    assert snippet.startswith("# calibrated on the validation split for proportions=0,0.5")
    with pytest.raises(ConfigError, match="exit names"):
        result.yaml_snippet(["only_one"])


@pytest.mark.parametrize("value", [1e-05, 2.5e-12, 0.1, 3.0, 1e20])
def test_thresholds_are_written_as_yaml_floats(value):
    assert yaml.safe_load(f"t: {yaml_float(value)}")["t"] == value


def test_the_result_is_plain_data_for_summaries_and_checkpoints():
    logits, targets = synthetic(n=300)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, parse_target("drop=1"), temperature=True)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["target"] == "drop=1" and data["criteria"] == ["entropy", "entropy"]
    assert data["thresholds"] == result.thresholds and data["temperatures"] == result.temperatures
    assert set(data["valid"]) == {"top1", "final_top1", "drop", "expected_macs", "macs_fraction", "taken_pct"}
    assert sum(data["valid"]["taken_pct"]) == pytest.approx(100.0)


# --------------------------------------------------------------------------- the exits of a model
def lenet_policy(ee, lenet):
    config = ee.exits_config(["conv1", "conv2"])
    return EarlyExits.from_config(config, lenet, num_classes=10, input_shape=(1, 28, 28))


def batches(model, n, seed, noise=0.2, batch=64):
    """Random inputs labelled by the model itself, a share ``noise`` of labels replaced at random."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    flip = torch.rand(n, generator=gen) < noise
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_calibrate_exits_sets_the_thresholds_the_exits_then_measure(ee, lenet):
    policy = lenet_policy(ee, lenet)
    valid = batches(lenet, 256, seed=1)
    result = calibrate_exits(policy, valid, parse_target("macs=0.8"))
    assert policy.thresholds == result.thresholds
    rows = policy.evaluate(valid)
    assert overall_top1(rows) == pytest.approx(result.top1)
    assert expected_macs(rows) == pytest.approx(result.expected_macs)


def test_calibrate_exits_folds_temperatures_into_the_branches(ee, lenet):
    policy = lenet_policy(ee, lenet)
    valid = batches(lenet, 256, seed=1)
    x = valid[0][0]
    before = policy.multi_exit_model().eval().simulate(x)
    result = calibrate_exits(policy, valid, parse_target("drop=2"), temperature=True)
    after = policy.multi_exit_model().eval().simulate(x)
    for k, t in enumerate(result.temperatures):
        assert torch.allclose(after[k], before[k] / t, atol=1e-5)
    assert torch.equal(after[-1], before[-1])
    assert overall_top1(policy.evaluate(valid)) == pytest.approx(result.top1, abs=0.5)


def test_thresholds_never_depend_on_the_test_split(ee, lenet, tmp_path):
    valid = batches(lenet, 256, seed=1)
    runs = []
    for test_seed, noise in ((2, 0.2), (3, 0.9)):
        model = type(lenet)()
        model.load_state_dict(lenet.state_dict())
        torch.manual_seed(0)  # the same branch weights in both runs
        policy = lenet_policy(ee, model.eval())
        test = batches(model, 192, seed=test_seed, noise=noise)
        runs.append(run_calibration(policy, valid, test, "drop=1", str(tmp_path / str(test_seed)))["calibration"])
    assert runs[0]["thresholds"] == runs[1]["thresholds"]
    assert runs[0]["valid"] == runs[1]["valid"]
    assert runs[0]["test"] != runs[1]["test"]


def test_run_calibration_reports_both_splits_and_writes_the_files(ee, lenet, tmp_path, caplog):
    policy = lenet_policy(ee, lenet)
    valid, test = batches(lenet, 256, seed=1), batches(lenet, 192, seed=2)
    with caplog.at_level(logging.INFO, logger="distill_ee"):
        out = run_calibration(policy, valid, test, "macs=0.7", str(tmp_path), temperature=True)
    cal = json.loads(json.dumps(out))["calibration"]
    assert cal["target"] == "macs=0.7" and cal["thresholds"] == policy.thresholds
    assert len(cal["temperatures"]) == 2
    for split in ("valid", "test"):
        assert set(cal[split]["taken_pct"]) == {"exit1", "exit2", "final"}
        assert sum(cal[split]["taken_pct"].values()) == pytest.approx(100.0)
        assert cal[split]["drop"] == pytest.approx(cal[split]["final_top1"] - cal[split]["top1"])
    assert cal["valid"]["macs_fraction"] <= 0.7 + 1e-12
    rows = policy.evaluate(test)
    assert cal["test"]["top1"] == pytest.approx(overall_top1(rows))
    assert cal["test"]["expected_macs"] == pytest.approx(expected_macs(rows))
    assert [f.rsplit("/", 1)[-1] for f in cal["files"]] == ["tradeoff.csv", "tradeoff.png", "exit_fractions.png"]
    assert all((tmp_path / f.rsplit("/", 1)[-1]).stat().st_size > 0 for f in cal["files"])
    assert cal["yaml"] in caplog.text and "exit1:" in cal["yaml"]


def test_run_calibration_needs_a_validation_split(ee, lenet, tmp_path):
    policy = lenet_policy(ee, lenet)
    with pytest.raises(ConfigError, match="validation split"):
        run_calibration(policy, None, batches(lenet, 64, seed=2), "drop=1", str(tmp_path))


# --------------------------------------------------------------------------- generalisation
@pytest.fixture
def one_thread():
    """Small convolutions train faster on one thread than on two contended ones; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LENET_EXIT = {"exits": {"exit1": {"attach": "pool1", "branch": ["flatten", {"type": "linear"}],
                                  "loss_weight": 0.3}}}
#: Tolerance of the test drop over the validation target, in top-1 points. With 1,000 test images a point is
#: 10 images; the drop is the net loss on the few dozen images where exit and final classifier disagree among
#: those leaving early, whose count varies by about its square root (~3-5 images) between two splits, and
#: the threshold is chosen at the edge of what validation allows, so test drops sit above the target on
#: average. One point is 2-3 such standard deviations.
TOLERANCE = 1.0


@pytest.mark.slow
def test_thresholds_calibrated_on_validation_keep_their_promise_on_test(one_thread, tmp_path):
    from distill_ee.apputils.datasets import load_dataset, make_loaders
    from distill_ee.apputils.models import create_model

    torch.manual_seed(0)
    splits = load_dataset("mnist5k", valid_size=0.25, split_seed=0)  # 3,000 train, 1,000 valid, 1,000 test
    train, valid, test = make_loaders(splits, 64, seed=0)
    model = create_model("lenet_mnist", 10, 1)
    exits = EarlyExits.from_config(LENET_EXIT, model, num_classes=10, input_shape=(1, 28, 28))
    policy = EarlyExitPolicy(exits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)  # branches are model parameters
    for epoch in range(2):
        model.train()
        policy.on_epoch_begin(HookContext(epoch=epoch, model=model))
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            joint = policy.before_backward_pass(HookContext(epoch=epoch, model=model, loss=loss, target=y))
            optimizer.zero_grad()
            joint.overall_loss.backward()
            optimizer.step()
        policy.on_epoch_end(HookContext(epoch=epoch, model=model))
    model.eval()
    cal = run_calibration(exits, valid, test, "drop=1.0", str(tmp_path))["calibration"]
    assert cal["valid"]["drop"] <= 1.0 + 1e-9
    assert cal["test"]["drop"] <= 1.0 + TOLERANCE
    assert cal["test"]["macs_fraction"] < 1.0
    assert cal["test"]["taken_pct"]["exit1"] > 10.0  # the exit is really used
    assert cal["test"]["final_top1"] > 85.0  # the model did learn


def test_run_calibration_with_a_guarantee_reports_the_certificate_and_realised_losses(ee, lenet, tmp_path, caplog):
    from distill_ee.early_exit.risk import Guarantee

    policy = lenet_policy(ee, lenet)
    valid, test = batches(lenet, 512, seed=1, noise=0.05), batches(lenet, 256, seed=2, noise=0.05)
    with caplog.at_level(logging.INFO, logger="distill_ee"):
        out = run_calibration(policy, valid, test, "drop=5", str(tmp_path), guarantee=Guarantee(0.9))
    report = json.loads(json.dumps(out))["calibration"]["guarantee"]
    assert report["delta"] == pytest.approx(0.1) and report["consistency"] == "risk"
    assert report["bound_used"] == "exact binomial tail (Clopper-Pearson)" and report["test_samples"] == 256
    assert set(report) >= {"certified_bound", "valid_loss_pct", "test_loss_pct", "message"}
    if report["certified_bound"] is not None:
        assert report["certified_bound"] <= 0.05
    assert "Guarantee: " in caplog.text and (tmp_path / "tradeoff.png").stat().st_size > 0


# --------------------------------------------------------------------------- MSDNet's budgeted batch rule
def test_geometric_shares_follow_the_law_and_average_the_budget():
    from distill_ee.early_exit.calibrate import geometric_shares
    shares = geometric_shares(MACS, 100.0, 0.5)
    assert sum(shares) == pytest.approx(1.0)
    assert shares[1] / shares[0] == pytest.approx(shares[2] / shares[1])  # q_k ~ (1 - q)^(k-1)
    assert sum(s * m for s, m in zip(shares, MACS)) == pytest.approx(50.0, rel=1e-6)
    # a budget of the first exit's cost sends everyone there; the final classifier's, nearly everyone there
    assert geometric_shares(MACS, 100.0, 0.3)[0] == pytest.approx(1.0, abs=1e-6)
    assert geometric_shares([30.0, 70.0, 100.0], 100.0, 1.0)[-1] > 0.99
    with pytest.raises(ConfigError, match="first exit costs 30.0%"):
        geometric_shares(MACS, 100.0, 0.2)


def test_a_budget_sets_thresholds_for_the_geometric_shares():
    from distill_ee.early_exit.calibrate import geometric_shares
    logits, targets = synthetic(n=2000)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, parse_target("budget=55%"))
    wanted = [100.0 * s for s in geometric_shares(MACS, 100.0, 0.55)]
    assert result.taken_pct == pytest.approx(wanted, abs=0.1)
    assert result.chosen.macs_fraction == pytest.approx(0.55, abs=0.002)


def test_run_calibration_compares_the_budget_rule_with_the_macs_search(ee, lenet, tmp_path):
    policy = lenet_policy(ee, lenet)
    valid, test = batches(lenet, 256, seed=1), batches(lenet, 192, seed=2)
    cal = run_calibration(policy, valid, test, "budget=0.7", str(tmp_path))["calibration"]
    other = cal["same_budget_macs_search"]
    assert cal["target"] == "budget=0.7" and cal["thresholds"] == policy.thresholds  # the budget rule's stay
    assert other["thresholds"] != cal["thresholds"] or other["valid"] == cal["valid"]
    assert other["valid"]["macs_fraction"] <= 0.7 + 1e-9
    assert other["valid"]["top1"] >= cal["valid"]["top1"] - 1e-9 or cal["valid"]["macs_fraction"] > 0.7
