"""GroupVarianceRegularizer: strength / (unbiased variance of the input channels' L2 norms), as Distiller's."""
import math

import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.registry import REGULARIZERS
from distill_ee.regularization.group_lasso import GroupVarianceRegularizer
from distill_ee.regularization.regularizer import EPSILON

# 2 filters x 3 input channels x 1 x 2 kernels
CONV = torch.tensor([
    [[[1.0, 0.0]], [[0.0, 2.0]], [[1.0, 1.0]]],
    [[[2.0, 2.0]], [[1.0, 0.0]], [[0.0, 0.0]]],
])


def distiller_loss(strength, sums_of_squares):
    """Distiller: channels_l2 = sqrt(sum of squares + EPSILON); loss = strength * (1 / channels_l2.var())."""
    norms = [math.sqrt(s + EPSILON) for s in sums_of_squares]
    mean = sum(norms) / len(norms)
    variance = sum((n - mean) ** 2 for n in norms) / (len(norms) - 1)
    return strength * (1 / variance)


def test_loss_is_strength_over_the_variance_of_the_channel_norms():
    reg = GroupVarianceRegularizer("gv", None, {"w": [0.5, "Channels"]})
    loss = reg.loss(CONV, "w", torch.tensor(0.0), {})
    # channel 0: 1 + 0 + 4 + 4 = 9; channel 1: 0 + 4 + 1 + 0 = 5; channel 2: 1 + 1 + 0 + 0 = 2
    assert loss.item() == pytest.approx(distiller_loss(0.5, [9.0, 5.0, 2.0]), rel=1e-6)


def test_loss_equals_distillers_computation_exactly():
    # Distiller's _channels_l2 and GroupVarianceRegularizer.loss, step by step
    k_sq_sums = CONV.view(-1, CONV.size(2) * CONV.size(3)).pow(2).sum(dim=1)
    channels_l2 = k_sq_sums.view(CONV.size(0), CONV.size(1)).t().sum(dim=1).add(EPSILON).pow(1 / 2.0)
    expected = 0.5 * (1 / channels_l2.var())
    reg = GroupVarianceRegularizer("gv", None, {"w": [0.5, "Channels"]})
    assert torch.equal(reg.loss(CONV, "w", torch.tensor(0.0), {}), expected)


def test_loss_is_added_to_the_running_loss_and_other_weights_are_left_alone():
    reg = GroupVarianceRegularizer("gv", None, {"w": [0.5, "Channels"]})
    running = torch.tensor(2.0)
    assert reg.loss(CONV, "w", running, {}).item() == pytest.approx(2.0 + distiller_loss(0.5, [9.0, 5.0, 2.0]))
    assert reg.loss(CONV, "other", running, {}) is running


def test_the_penalty_has_a_gradient_and_lies_on_the_schedules_registry():
    weight = CONV.clone().requires_grad_(True)
    reg = REGULARIZERS.get("GroupVarianceRegularizer")("gv", None, {"w": [1.0, "Channels"]})
    reg.loss(weight, "w", torch.tensor(0.0), {}).backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_there_is_no_thresholding():
    reg = GroupVarianceRegularizer("gv", None, {"w": [10.0, "Channels"]})
    masks = {"w": ParameterMasker("w")}
    reg.threshold(CONV, "w", masks)
    assert masks["w"].mask is None and reg.threshold_criteria is None


@pytest.mark.parametrize(
    "regims, match",
    [
        ({"w": [0.1, "Filters"]}, r"reg_regims\['w'\]: unknown group type 'Filters'.*valid.*Channels"),
        ({"w": [0.1]}, r"reg_regims\['w'\] must be \[strength, group_type\]"),
        ({"w": ["strong", "Channels"]}, r"reg_regims\['w'\]\[0\] must be a finite number"),
        ({}, "'reg_regims' must map weight names"),
    ],
)
def test_bad_reg_regims_are_one_line_schedule_errors(regims, match):
    with pytest.raises(ScheduleError, match=match) as err:
        GroupVarianceRegularizer("gv", None, regims)
    assert "\n" not in str(err.value)


def test_a_weight_that_cannot_have_a_channel_variance_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(3, 2))
    with pytest.raises(ScheduleError, match=r"reg_regims\['0.weight'\].*at least 2 input channels"):
        GroupVarianceRegularizer("gv", model, {"0.weight": [0.1, "Channels"]})
    with pytest.raises(ScheduleError, match=r"reg_regims\['1.bias'\]"):
        GroupVarianceRegularizer("gv", model, {"1.bias": [0.1, "Channels"]})


def test_threshold_criteria_is_not_an_argument():
    with pytest.raises(TypeError):
        GroupVarianceRegularizer("gv", None, {"w": [0.1, "Channels"]}, threshold_criteria="Max")
