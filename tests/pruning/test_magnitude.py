"""MagnitudeParameterPruner: zero every element whose magnitude is at most the weight's threshold."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.magnitude import MagnitudeParameterPruner, threshold_mask
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.registry import PRUNERS


def masks_for(*names):
    return {name: ParameterMasker(name) for name in names}


def test_threshold_mask_keeps_only_elements_strictly_above_the_threshold():
    w = torch.tensor([-0.3, -0.1, 0.0, 0.1, 0.2, 0.5])
    assert threshold_mask(w, 0.1).tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_named_threshold_wins_over_the_default_and_the_default_covers_other_weights():
    pruner = MagnitudeParameterPruner("mag", thresholds={"fc.weight": 0.25, "*": 0.05})
    masks = masks_for("fc.weight", "conv.weight")
    w = torch.tensor([0.1, 0.2, 0.3, -0.4])
    pruner.set_param_mask(w, "fc.weight", masks, {})
    pruner.set_param_mask(w, "conv.weight", masks, {})
    assert masks["fc.weight"].mask.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert masks["conv.weight"].mask.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_without_a_default_only_named_weights_are_handled():
    pruner = MagnitudeParameterPruner("mag", thresholds={"fc.weight": 0.25})
    masks = masks_for("conv.weight")
    pruner.set_param_mask(torch.ones(3), "conv.weight", masks, {})
    assert masks["conv.weight"].mask is None
    assert pruner.handles("fc.weight") and not pruner.handles("conv.weight")


def test_mask_has_the_weight_dtype_and_shape():
    pruner = MagnitudeParameterPruner("mag", thresholds={"*": 0.5})
    masks = masks_for("w")
    w = torch.randn(4, 3, dtype=torch.float64)
    pruner.set_param_mask(w, "w", masks, {})
    assert masks["w"].mask.dtype == torch.float64 and masks["w"].mask.shape == w.shape


def test_registered_under_distillers_name():
    assert PRUNERS.get("MagnitudeParameterPruner") is MagnitudeParameterPruner


def test_a_threshold_that_is_not_a_number_is_a_schedule_error():
    with pytest.raises(ScheduleError, match="thresholds"):
        MagnitudeParameterPruner("mag", thresholds={"fc.weight": "high"})
