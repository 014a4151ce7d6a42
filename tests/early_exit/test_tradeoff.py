"""The accuracy / cost trade-off: candidate thresholds, exact evaluation of settings, the Pareto front, files."""
import math

import pytest
import torch

from distill_ee.early_exit.criteria import EntropyCriterion, ExitCriterion, get_criterion
from distill_ee.early_exit.tradeoff import (ExitCosts, build_space, coordinate_descent, criterion_threshold,
                                            evaluate_block, evaluate_grid, evaluate_settings, exit_candidates,
                                            explore, front_rows, measure_point, pareto_front, trade_keys,
                                            uses_grid)
from distill_ee.errors import ConfigError
from support import costs_for, synthetic

CRITERIA = ["entropy", "max_prob", "margin"]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_grid_figures_are_those_of_the_real_exit_decisions(criterion):
    logits, targets = synthetic()
    costs = costs_for(2)
    space = build_space(logits, targets, criterion, costs, candidates=40)
    grid = evaluate_grid(space)
    assert len(grid) == math.prod(space.sizes)
    for row in torch.randperm(len(grid), generator=torch.Generator().manual_seed(1))[:25].tolist():
        searched = space.point(grid, row)
        real = measure_point(logits, targets, criterion, searched.thresholds, costs)
        assert searched.top1 == pytest.approx(real.top1)
        assert searched.expected_macs == pytest.approx(real.expected_macs)
        assert searched.taken_pct == pytest.approx(real.taken_pct)


def test_whole_grid_and_sample_by_sample_evaluation_agree():
    logits, targets = synthetic(strengths=(1.0, 1.5, 2.5, 4.0))
    space = build_space(logits, targets, "entropy", costs_for(3), candidates=12)
    grid = evaluate_grid(space)
    direct = evaluate_settings(space, grid.index)
    assert torch.equal(grid.correct, direct.correct)
    assert torch.equal(grid.counts, direct.counts)
    assert torch.allclose(grid.macs, direct.macs)


def test_a_block_of_exits_is_evaluated_with_the_other_exits_fixed():
    logits, targets = synthetic(strengths=(1.0, 1.5, 2.0, 2.5, 4.0))
    space = build_space(logits, targets, "max_prob", costs_for(4), candidates=10)
    current = [3, 1, 5, 2]
    block = evaluate_block(space, current, 1, 3)
    assert len(block) == space.sizes[1] * space.sizes[2]
    assert torch.equal(block.index[:, [0, 3]], torch.tensor([[3, 2]]).expand(len(block), 2))
    direct = evaluate_settings(space, block.index)
    assert torch.equal(block.correct, direct.correct)
    assert torch.equal(block.counts, direct.counts)
    assert torch.allclose(block.macs, direct.macs)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_candidates_run_loosest_first_and_are_valid_thresholds(criterion):
    logits, _ = synthetic()
    crit = get_criterion(criterion)
    values, fires = exit_candidates(crit, logits[0], 50)
    counts = fires.sum(dim=1)
    assert bool((counts[1:] < counts[:-1]).all())  # strictly fewer samples leave at each stricter candidate
    assert bool((fires[1:] <= fires[:-1]).all())  # and they are a subset of the looser candidate's
    assert int(counts[0]) == logits[0].shape[0]  # the loosest lets every sample out
    assert all(crit.check_threshold(v) is None for v in values)
    for value, row in zip(values, fires):
        assert torch.equal(row, crit.exit_mask(logits[0], value))


def test_an_exit_that_is_off_costs_nothing_and_takes_no_sample():
    logits, targets = synthetic(strengths=(1.0, 4.0))
    costs = ExitCosts([40.0, 110.0], 100.0, [10.0])
    point = measure_point(logits, targets, "entropy", [None], costs)
    assert point.taken_pct == [0.0, 100.0]
    assert point.expected_macs == pytest.approx(100.0)  # the backbone only: the branch is skipped
    everyone = measure_point(logits, targets, "entropy", [100.0], costs)
    assert everyone.taken_pct == [100.0, 0.0]
    assert everyone.expected_macs == pytest.approx(40.0)


def test_without_branch_costs_an_exit_that_is_off_still_pays_its_branch():
    logits, targets = synthetic(strengths=(1.0, 4.0))
    point = measure_point(logits, targets, "entropy", [None], ExitCosts([40.0, 110.0], 100.0))
    assert point.expected_macs == pytest.approx(110.0)
    assert point.macs_fraction == pytest.approx(1.1)


def test_the_front_holds_only_non_dominated_settings_and_dominates_the_rest():
    logits, targets = synthetic()
    space = build_space(logits, targets, "entropy", costs_for(2), candidates=30)
    grid = evaluate_grid(space)
    rows = front_rows(grid)
    macs, correct = grid.macs[rows], grid.correct[rows]
    assert bool((macs[1:] >= macs[:-1]).all()) and bool((correct[1:] > correct[:-1]).all())
    for i in range(len(grid)):
        covered = (macs <= grid.macs[i] + 1e-9) & (correct >= grid.correct[i])
        assert bool(covered.any())


def test_pareto_front_returns_points_cheapest_first():
    logits, targets = synthetic()
    costs = costs_for(2)
    points = pareto_front(logits, targets, ["entropy", "margin"], costs.macs_per_exit, costs.full_macs, 30,
                          branch_macs=costs.branch_macs)
    assert len(points) > 5
    assert [p.expected_macs for p in points] == sorted(p.expected_macs for p in points)
    assert [p.top1 for p in points] == sorted(p.top1 for p in points)
    real = measure_point(logits, targets, ["entropy", "margin"], points[-1].thresholds, costs)
    assert points[-1].top1 == pytest.approx(real.top1)
    assert points[-1].expected_macs == pytest.approx(real.expected_macs)


def test_coordinate_descent_never_ends_worse_than_its_start():
    logits, targets = synthetic(strengths=(1.0, 1.5, 2.0, 2.5, 4.0))
    space = build_space(logits, targets, "entropy", costs_for(4), candidates=15)
    keys = trade_keys(space, 0.1)
    start = space.off
    explored = coordinate_descent(space, keys, start)
    start_value = keys(evaluate_settings(space, torch.tensor([start])))[0][0]
    assert float(keys(explored)[0].max()) >= float(start_value)
    first_sweep = sum(space.sizes[a] * space.sizes[a + 1] for a in range(3))  # a grid per adjacent pair
    assert len(explored) >= first_sweep


def test_large_spaces_are_explored_by_descent_and_still_give_a_front():
    logits, targets = synthetic(n=300, strengths=(1.0, 1.5, 2.0, 2.5, 4.0))
    space = build_space(logits, targets, "entropy", costs_for(4), candidates=50)
    assert not uses_grid(space)
    settings = explore(space)
    rows = front_rows(settings)
    assert len(rows) > 5
    assert float(settings.correct.max()) >= float(space.correct[-1].sum())  # at least the final exit's accuracy


class NoInverseEntropy(EntropyCriterion):
    """Entropy without ``threshold_for`` (a plug-in criterion that did not implement it)."""

    def threshold_for(self, confidence):
        raise NotImplementedError


class Unknown(ExitCriterion):
    """A criterion calibration knows nothing about."""

    name = "unknown"

    def confidence(self, logits):
        return logits.amax(dim=1)

    def exit_mask(self, logits, threshold, state=None):
        return logits.amax(dim=1) > threshold


class NotMonotone(ExitCriterion):
    """Exits on alternate bands of confidence: no threshold order exists."""

    name = "bands"

    def confidence(self, logits):
        return logits.amax(dim=1)

    def exit_mask(self, logits, threshold, state=None):
        return (logits.amax(dim=1) * 7 + threshold).floor().remainder(2) == 0

    def threshold_for(self, confidence):
        return float(confidence)


def test_criteria_without_threshold_for_are_converted_by_name():
    assert criterion_threshold(NoInverseEntropy(), -0.5) == 0.5
    logits, targets = synthetic(strengths=(1.0, 4.0))
    space = build_space(logits, targets, [NoInverseEntropy()], ExitCosts([50.0, 100.0], 100.0), candidates=20)
    assert len(space.thresholds[0]) > 5


def test_criteria_calibration_cannot_invert_are_refused():
    with pytest.raises(ConfigError, match="cannot be calibrated"):
        criterion_threshold(Unknown(), 0.5)


def test_criteria_whose_decisions_are_not_monotone_are_refused():
    logits, targets = synthetic(strengths=(1.0, 4.0))
    with pytest.raises(ConfigError, match="not monotone"):
        build_space(logits, targets, [NotMonotone()], ExitCosts([50.0, 100.0], 100.0), candidates=50)


def test_mismatched_inputs_are_config_errors():
    logits, targets = synthetic(strengths=(1.0, 2.0, 4.0))
    with pytest.raises(ConfigError, match="MAC counts"):
        build_space(logits, targets, "entropy", ExitCosts([50.0, 100.0], 100.0))
    with pytest.raises(ConfigError, match="one criterion per early exit"):
        build_space(logits, targets, ["entropy"], costs_for(2))
    with pytest.raises(ConfigError, match="at least one early exit"):
        build_space(logits[-1:], targets, "entropy", costs_for(2))
    with pytest.raises(ConfigError, match="positive"):
        ExitCosts([50.0, 100.0], 0.0)
