"""Calibration with a statistical guarantee: p-values and bounds against hand computations and exact binomial
tails, fixed-sequence testing, the empirical violation rate of the whole procedure, and the fallback."""
import math
import random

import pytest
import torch

from distill_ee.early_exit.calibrate import CalibrationTarget, calibrate
from distill_ee.early_exit.risk import (Guarantee, binomial_cdf, binomial_p_value, certify_sequence,
                                        clopper_pearson_upper, consistency_ok, fixed_sequence, hoeffding_p_value,
                                        loss_rate, smallest_certifiable, split_indices)
from distill_ee.errors import ConfigError
from support import synthetic

MACS = [30.0, 70.0, 110.0]
BRANCHES = [5.0, 5.0]


def direct_cdf(k, n, p):
    """P(Binomial(n, p) <= k) summed term by term with exact binomial coefficients."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize("k, n, p", [(0, 1, 0.3), (3, 10, 0.2), (7, 12, 0.5), (0, 20, 0.05), (19, 20, 0.9),
                                     (5, 40, 0.01), (40, 40, 0.3)])
def test_the_binomial_tail_equals_the_sum_of_its_terms(k, n, p):
    assert binomial_cdf(k, n, p) == pytest.approx(direct_cdf(k, n, p), rel=1e-12, abs=1e-300)


def test_p_values_and_bounds_by_hand():
    assert binomial_p_value(0, 10, 0.2) == pytest.approx(0.8 ** 10)  # no loss in 10: P(Bin(10, .2) = 0)
    assert binomial_p_value(1, 10, 0.2) == pytest.approx(0.8 ** 10 + 10 * 0.2 * 0.8 ** 9)
    assert hoeffding_p_value(0.0, 10, 0.2) == pytest.approx(math.exp(-2 * 10 * 0.04))
    assert hoeffding_p_value(0.3, 10, 0.2) == 1.0
    assert binomial_p_value(0, 10, 0.2) < hoeffding_p_value(0.0, 10, 0.2)  # the exact tail is tighter here
    assert clopper_pearson_upper(0, 10, 0.1) == pytest.approx(1 - 0.1 ** (1 / 10), abs=1e-9)
    assert smallest_certifiable(10, 0.1) == pytest.approx(1 - 0.1 ** 0.1)
    upper = clopper_pearson_upper(3, 50, 0.05)
    assert binomial_cdf(3, 50, upper) == pytest.approx(0.05, abs=1e-6) and upper > 3 / 50
    assert clopper_pearson_upper(50, 50, 0.05) == 1.0


def test_fixed_sequence_testing_stops_at_the_first_failure():
    assert fixed_sequence([0.01, 0.02, 0.2, 0.01, 0.001], 0.1) == 2
    assert fixed_sequence([0.5, 0.01], 0.1) == 0
    assert fixed_sequence([0.01, 0.1], 0.1) == 2
    p_values, certified = certify_sequence([0, 1, 9, 0], 100, 0.05, 0.1)
    assert certified == 2 and p_values[2] > 0.1 and p_values[3] < 0.1  # the fourth is never reached


def test_the_procedure_breaks_its_promise_at_most_delta_of_the_time():
    """Settings with known loss rates 0, 0.005 ... 0.1; each draw tests them in order on n samples whose losses
    are nested (a sample lost by one setting is lost by every looser one). The chosen setting's true rate
    exceeds the target in at most delta of the draws (up to three standard errors)."""
    rates = [0.005 * j for j in range(21)]
    target, delta, n, draws = 0.05, 0.1, 300, 1000
    rng = random.Random(7)
    broken = 0
    for _ in range(draws):
        u = [rng.random() for _ in range(n)]
        losses = [sum(x < r for x in u) for r in rates]
        _, certified = certify_sequence(losses, n, target, delta)
        if certified and rates[certified - 1] > target:
            broken += 1
    rate = broken / draws
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    assert broken > 0 or rates[-1] <= target  # the test can fail: the procedure is exercised near its edge


def test_losses_of_each_consistency_notion():
    exit_logits = [torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), torch.tensor([[2.0, 0.0], [2.0, 0.0],
                                                                                       [0.0, 2.0]])]
    targets = torch.tensor([0, 0, 0])
    risk = consistency_ok(exit_logits, targets, "risk")
    assert risk[0].tolist() == [1.0, 0.0, 1.0]  # sample 1: final right, exit wrong; sample 2: final wrong
    assert risk[1].tolist() == [1.0, 1.0, 1.0]
    textual = consistency_ok(exit_logits, None, "textual")
    assert textual[0].tolist() == [1.0, 0.0, 0.0]  # no labels needed
    assert loss_rate(exit_logits, targets, ["max_prob"], [0.5], "risk") == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="needs the labels"):
        consistency_ok(exit_logits, None, "risk")


def test_the_split_is_seeded_and_disjoint():
    search, test = split_indices(10, 0.5, 3)
    assert sorted(search.tolist() + test.tolist()) == list(range(10)) and len(search) == 5
    assert torch.equal(split_indices(10, 0.5, 3)[0], search) and not torch.equal(split_indices(10, 0.5, 4)[0], search)


def test_a_guaranteed_calibration_certifies_its_choice_below_the_target():
    logits, targets = synthetic(n=2000)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, CalibrationTarget("drop", (2.0,)),
                       branch_macs=BRANCHES, guarantee=Guarantee(0.9))
    certificate = result.certificate
    assert certificate.chosen is not None and certificate.bound <= 0.02
    assert certificate.certified >= 1 and certificate.test_samples == 1000
    assert all(t["p_value"] <= 0.1 for t in certificate.tested[:certificate.certified])
    assert result.macs_fraction < 1.0 and len(result.certified_points) == certificate.certified
    assert result.to_dict()["guarantee"]["bound_used"] == "exact binomial tail (Clopper-Pearson)"


def test_an_uncertifiable_target_falls_back_to_the_final_exit_and_says_why():
    logits, targets = synthetic(n=200)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, CalibrationTarget("drop", (0.5,)),
                       branch_macs=BRANCHES, guarantee=Guarantee(0.9))
    assert result.thresholds == [None, None] and result.certificate.chosen is None
    smallest = 100 * smallest_certifiable(100, 0.1)
    assert f"the smallest top-1 drop certifiable at confidence 0.9 is {smallest:.2f} points" in \
        result.certificate.message
    assert "the final exit alone is used" in result.certificate.message


def test_a_macs_target_keeps_its_choice_and_bounds_its_loss_on_the_other_part():
    logits, targets = synthetic(n=1000)
    result = calibrate(logits, targets, "entropy", MACS, 100.0, CalibrationTarget("macs", (0.6,)),
                       branch_macs=BRANCHES, guarantee=Guarantee(0.95, "textual"))
    certificate = result.certificate
    assert certificate.target is None and certificate.chosen == 0 and 0 < certificate.bound < 1
    assert "disagreement with the final classifier on new data is at most" in certificate.message


def test_bad_guarantees_are_config_errors():
    with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
        Guarantee(1.0)
    with pytest.raises(ConfigError, match="unknown consistency"):
        Guarantee(0.9, "semantic")
    logits, targets = synthetic(n=100)
    with pytest.raises(ConfigError, match="not to fixed proportions"):
        calibrate(logits, targets, "entropy", MACS, 100.0, CalibrationTarget("proportions", (0.5, 0.2)),
                  guarantee=Guarantee(0.9))


def test_textual_consistency_certifies_with_unlabelled_samples_too():
    logits, targets = synthetic(n=2000)
    unlabelled = targets.clone()
    unlabelled[500:] = -1  # three quarters without labels
    result = calibrate(logits, unlabelled, "entropy", MACS, 100.0, CalibrationTarget("drop", (5.0,)),
                       branch_macs=BRANCHES, guarantee=Guarantee(0.9, "textual"))
    assert result.certificate.test_samples == 1000 and result.certificate.chosen is not None
    assert result.certificate.bound <= 0.05
    assert sum(result.taken_pct) == pytest.approx(100.0)  # accuracy figures on the 500 labelled samples
    with pytest.raises(ConfigError, match="unlabelled samples"):
        calibrate(logits, unlabelled, "entropy", MACS, 100.0, CalibrationTarget("drop", (5.0,)),
                  branch_macs=BRANCHES, guarantee=Guarantee(0.9, "risk"))
