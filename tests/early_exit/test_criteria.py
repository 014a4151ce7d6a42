"""Exit criteria: decisions from logits only, confidence ordering, patience state."""
import inspect
import math

import pytest
import torch

from distill_ee.early_exit.criteria import criteria_list, get_criterion
from distill_ee.registry import EXIT_CRITERIA

CONFIDENT = [10.0, 0.0, 0.0]
UNSURE = [0.1, 0.0, 0.05]


def logits(*rows):
    return torch.tensor(rows)


def test_the_registered_criteria_are_exactly_the_label_free_ones():
    assert EXIT_CRITERIA.names() == ["entropy", "gate", "learned", "margin", "max_prob", "patience"]
    for name in EXIT_CRITERIA.names():
        crit = get_criterion(name)
        params = set(inspect.signature(crit.exit_mask).parameters)
        assert params == {"logits", "threshold", "state"}


def test_entropy_exits_below_the_threshold():
    crit = get_criterion("entropy")
    x = logits(CONFIDENT, UNSURE)
    h = crit.entropy(x)
    assert h[1] == pytest.approx(math.log(3), abs=0.01)
    assert crit.exit_mask(x, 0.5).tolist() == [True, False]
    assert torch.allclose(crit.confidence(x), -h)


def test_max_prob_and_margin_exit_at_or_above_the_threshold():
    x = logits([2.0, 0.0], [0.0, 0.0])
    p = torch.softmax(x, 1)
    assert torch.allclose(get_criterion("max_prob").confidence(x), p.max(1).values)
    assert get_criterion("max_prob").exit_mask(x, 0.5).tolist() == [True, True]
    assert get_criterion("max_prob").exit_mask(x, 0.6).tolist() == [True, False]
    assert torch.allclose(get_criterion("margin").confidence(x), p[:, 0] - p[:, 1], atol=1e-6)
    assert get_criterion("margin").exit_mask(x, 0.5).tolist() == [True, False]


@pytest.mark.parametrize("name", ["entropy", "max_prob", "margin"])
def test_threshold_for_turns_a_confidence_into_an_exclusive_bound(name):
    crit = get_criterion(name)
    x = torch.randn(50, 4) * 3
    conf = crit.confidence(x)
    cut = float(conf.median())
    mask = crit.exit_mask(x, crit.threshold_for(cut))
    assert torch.equal(mask, conf > cut)


def test_patience_counts_consecutive_agreeing_exits():
    crit = get_criterion("patience")
    state = {}
    a = logits([1.0, 0.0], [1.0, 0.0])
    b = logits([1.0, 0.0], [0.0, 1.0])
    assert crit.exit_mask(a, 1, state).tolist() == [False, False]  # first exit: nothing to agree with
    assert crit.exit_mask(b, 1, state).tolist() == [True, False]  # sample 1 changed its mind
    assert state["patience_count"].tolist() == [1, 0]
    assert crit.exit_mask(b, 2, state).tolist() == [True, False]
    assert state["patience_count"].tolist() == [2, 1]


def test_threshold_ranges_are_described():
    assert get_criterion("entropy").check_threshold(-1) is not None
    assert get_criterion("max_prob").check_threshold(0.9) is None
    assert get_criterion("margin").check_threshold(2) is not None
    assert get_criterion("patience").check_threshold(1.5) is not None
    assert get_criterion("patience").check_threshold(3) is None


def test_criteria_list_broadcasts_one_or_checks_the_count():
    assert [c.name for c in criteria_list("margin", 3)] == ["margin"] * 3
    assert [c.name for c in criteria_list(["entropy", "softmax"], 2)] == ["entropy", "max_prob"]
    with pytest.raises(ValueError):
        criteria_list(["entropy"], 2)
