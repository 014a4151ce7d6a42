"""GroupLassoRegularizer: strength * sum of group L2 norms, and thresholding that zeroes weak groups."""
import math

import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.regularization.group_lasso import GroupLassoRegularizer
from distill_ee.regularization.regularizer import EPSILON

FC = torch.tensor([[3.0, 4.0], [0.0, 1.0], [2.0, 0.0]])
# 2 filters x 2 channels x 1 x 2 kernels
CONV = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]], [[[2.0, 2.0]], [[1.0, 0.0]]]])


def penalty(param, group_type, strength=0.5):
    reg = GroupLassoRegularizer("gl", None, reg_regims={"w": [strength, group_type]})
    return reg.loss(param, "w", torch.tensor(0.0), {}).item()


def norms(*sums_of_squares):
    return sum(math.sqrt(s + EPSILON) for s in sums_of_squares)


@pytest.mark.parametrize(
    "param, group_type, expected",
    [
        (FC, "Rows", 0.5 * norms(25, 1, 4)),
        (FC, "Cols", 0.5 * norms(13, 17)),
        (FC, "Rows+Cols", 0.5 * (norms(25, 1, 4) + norms(13, 17))),
        (CONV, "3D", 0.5 * norms(5, 9)),
        (CONV, "Filters", 0.5 * norms(5, 9)),
        (CONV, "Channels", 0.5 * norms(9, 5)),
        (CONV, "2D", 0.5 * norms(1, 4, 8, 1)),
        (CONV, "4D", 0.5 * math.sqrt(14)),
        (CONV, "Channels+4D", 0.5 * (norms(9, 5) + math.sqrt(14))),
    ],
)
def test_penalty_matches_the_hand_computed_value(param, group_type, expected):
    assert penalty(param, group_type) == pytest.approx(expected, rel=1e-6)


def test_mean_abs_thresholding_zeroes_the_weak_rows():
    reg = GroupLassoRegularizer("gl", None, {"w": [1.0, "Rows"]}, threshold_criteria="Mean_Abs")
    masks = {"w": ParameterMasker("w")}
    reg.threshold(FC, "w", masks)
    # row means of |w|: 3.5, 0.5, 1.0 -> only the first is above 1.0
    assert masks["w"].mask.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert masks["w"].is_regularization_mask


def test_max_thresholding_zeroes_filters_whose_largest_element_is_small():
    reg = GroupLassoRegularizer("gl", None, {"w": [1.5, "3D"]}, threshold_criteria="Max")
    masks = {"w": ParameterMasker("w")}
    reg.threshold(CONV, "w", masks)
    # filter maxima: 2.0 and 2.0 -> both kept, so no mask is set
    assert masks["w"].mask is None
    reg = GroupLassoRegularizer("gl", None, {"w": [1.5, "Channels"]}, threshold_criteria="Max")
    weak_channel = CONV.clone()
    weak_channel[:, 1] = 0.1
    reg.threshold(weak_channel, "w", masks)
    assert masks["w"].mask[:, 1].eq(0).all() and masks["w"].mask[:, 0].eq(1).all()


def test_4d_thresholding_zeroes_the_whole_weak_layer():
    reg = GroupLassoRegularizer("gl", None, {"w": [0.5, "4D"]}, threshold_criteria="Mean_Abs")
    masks = {"w": ParameterMasker("w")}
    reg.threshold(CONV * 0.1, "w", masks)
    assert masks["w"].mask.eq(0).all()


def test_unknown_group_type_and_unfit_shape_are_schedule_errors():
    with pytest.raises(ScheduleError, match="valid"):
        GroupLassoRegularizer("gl", None, {"w": [0.1, "Kernels"]})
    model = nn.Linear(3, 2)
    with pytest.raises(ScheduleError, match="bias"):
        GroupLassoRegularizer("gl", model, {"bias": [0.1, "Rows"]})
