"""Groups of a weight tensor: their views, magnitudes, how many to prune and the masks they expand to."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.structure import (
    expand_group_map,
    group_matrix,
    num_groups_to_prune,
    rank_keep_map,
)

CONV = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
FC = torch.arange(12, dtype=torch.float32).reshape(3, 4)


@pytest.mark.parametrize(
    "param, group_type, first_group",
    [
        (CONV, "Filters", CONV[0].reshape(-1)),
        (CONV, "3D", CONV[0].reshape(-1)),
        (CONV, "Channels", CONV[:, 0].reshape(-1)),
        (CONV, "2D", CONV[0, 0].reshape(-1)),
        (FC, "Rows", FC[0]),
        (FC, "Cols", FC[:, 0]),
        (FC, "Filters", FC[0]),
        (FC, "Channels", FC[:, 0]),
        (CONV, "4D", CONV.reshape(-1)),
    ],
)
def test_each_row_of_the_group_matrix_is_one_group(param, group_type, first_group):
    groups = group_matrix(param, group_type)
    assert torch.equal(groups[0], first_group)
    assert groups.numel() == param.numel()


@pytest.mark.parametrize("group_type, n_groups", [("Filters", 2), ("Channels", 3), ("2D", 6), ("4D", 1)])
def test_expanding_a_group_map_zeroes_exactly_the_elements_of_the_dropped_group(group_type, n_groups):
    keep = torch.ones(n_groups)
    keep[0] = 0
    mask = expand_group_map(CONV, group_type, keep)
    assert mask.shape == CONV.shape
    assert torch.equal(group_matrix(mask, group_type)[0], torch.zeros(CONV.numel() // n_groups))
    assert group_matrix(mask, group_type)[1:].eq(1).all()


def test_rows_and_cols_masks_of_a_linear_weight():
    keep = torch.tensor([1.0, 0.0, 1.0])
    assert expand_group_map(FC, "Rows", keep)[1].eq(0).all()
    keep_cols = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert expand_group_map(FC, "Cols", keep_cols)[:, 0].eq(0).all()


def test_number_of_groups_to_prune_is_floored_and_never_all_unless_asked():
    assert num_groups_to_prune(10, 0.35) == 3
    assert num_groups_to_prune(100, 0.29) == 29
    assert num_groups_to_prune(4, 0.99) == 3
    assert num_groups_to_prune(4, 1.0) == 4


def test_rank_keep_map_drops_the_groups_with_the_smallest_mean_magnitude():
    w = torch.zeros(4, 2, 1, 1)
    w[:, :, 0, 0] = torch.tensor([[3.0, 3.0], [0.5, -0.5], [2.0, 1.0], [-1.0, 0.0]])
    assert rank_keep_map(w, "Filters", 0.5).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert rank_keep_map(w, "Filters", 0.1) is None


def test_l2_ranking_can_differ_from_l1():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.1, 0.0, 0.0, 0.0]])
    assert rank_keep_map(w, "Rows", 0.5, "L1").tolist() == [1.0, 0.0]
    assert rank_keep_map(w, "Rows", 0.5, "L2").tolist() == [0.0, 1.0]


def test_a_group_type_that_does_not_fit_the_shape_is_a_schedule_error():
    with pytest.raises(ScheduleError, match="fc.bias"):
        group_matrix(torch.zeros(5), "Filters", "fc.bias")
    with pytest.raises(ScheduleError, match="valid"):
        group_matrix(CONV, "Kernels")
