"""SplicingPruner: prune below the low threshold, splice back above the high one, keep in between."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.pruning.splicing import SplicingPruner, splice_mask


def test_splice_mask_follows_the_network_surgery_rule():
    w = torch.tensor([0.05, 0.15, 0.15, 0.5])
    previous = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert splice_mask(w, previous, 0.1, 0.3).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_thresholds_come_from_mean_and_std_of_the_magnitudes():
    torch.manual_seed(0)
    w = torch.randn(30, 30)
    pruner = SplicingPruner("dns", sensitivities={"w": 0.5}, low_thresh_mult=0.9, hi_thresh_mult=1.1)
    low, hi = pruner.thresholds(w, "w", {"current_epoch": 0})
    base = w.abs().mean().item() + 0.5 * w.abs().std().item()
    assert (low, hi) == (pytest.approx(0.9 * base), pytest.approx(1.1 * base))


def test_a_missing_mask_counts_as_all_ones():
    torch.manual_seed(0)
    w = torch.randn(30, 30)
    pruner = SplicingPruner("dns", sensitivities={"*": 0.0}, low_thresh_mult=1.0, hi_thresh_mult=1.0)
    masks = {"w": ParameterMasker("w")}
    pruner.set_param_mask(w, "w", masks, {"current_epoch": 0})
    assert torch.equal(masks["w"].mask, (w.abs() >= w.abs().mean()).float())


def test_sensitivity_multiplier_grows_the_thresholds_linearly_with_epochs():
    w = torch.randn(10, 10)
    pruner = SplicingPruner("dns", {"w": 1.0}, 1.0, 1.0, sensitivity_multiplier=0.5)
    low0, _ = pruner.thresholds(w, "w", {"current_epoch": 2, "starting_epoch": 2})
    low2, _ = pruner.thresholds(w, "w", {"current_epoch": 4, "starting_epoch": 2})
    mean, std = pruner.magnitude_stats["w"]
    assert low0 == pytest.approx(mean + std)
    assert low2 == pytest.approx(mean + 2 * std)


def test_state_dict_round_trip_keeps_the_statistics():
    w = torch.randn(10, 10)
    pruner = SplicingPruner("dns", {"w": 1.0}, 0.9, 1.1)
    pruner.thresholds(w, "w", {"current_epoch": 0})
    resumed = SplicingPruner("dns", {"w": 1.0}, 0.9, 1.1)
    resumed.load_state_dict(pruner.state_dict())
    assert resumed.magnitude_stats == pruner.magnitude_stats


def test_low_multiplier_above_high_is_a_schedule_error():
    with pytest.raises(ScheduleError, match="low_thresh_mult"):
        SplicingPruner("dns", {"w": 1.0}, low_thresh_mult=2.0, hi_thresh_mult=1.0)
