"""SparsityLevelParameterPruner and level_mask: prune the smallest elements to an exact sparsity."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.level import SparsityLevelParameterPruner, level_mask
from distill_ee.pruning.masks import ParameterMasker, sparsity


@pytest.mark.parametrize("level", [0.1, 0.29, 0.5, 0.9, 1.0])
def test_level_mask_prunes_exactly_the_requested_fraction_of_a_random_tensor(level):
    torch.manual_seed(0)
    w = torch.randn(10, 10)
    mask = level_mask(w, level)
    assert sparsity(mask) == pytest.approx(level)


def test_level_mask_prunes_the_smallest_magnitudes():
    w = torch.tensor([0.5, -0.1, 0.3, -0.7, 0.2, 0.05, -0.6, 0.9])
    mask = level_mask(w, 0.5)
    assert mask.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_a_level_too_small_to_prune_an_element_keeps_everything():
    assert level_mask(torch.randn(5), 0.1).sum().item() == 5


def test_pruner_uses_the_named_level_then_the_default():
    torch.manual_seed(1)
    pruner = SparsityLevelParameterPruner("lvl", levels={"a": 0.25, "*": 0.75})
    masks = {n: ParameterMasker(n) for n in ("a", "b")}
    for name in ("a", "b"):
        pruner.set_param_mask(torch.randn(8, 8), name, masks, {})
    assert sparsity(masks["a"].mask) == pytest.approx(0.25)
    assert sparsity(masks["b"].mask) == pytest.approx(0.75)


def test_a_zero_level_sets_no_mask():
    pruner = SparsityLevelParameterPruner("lvl", levels={"a": 0.0})
    masks = {"a": ParameterMasker("a")}
    pruner.set_param_mask(torch.randn(4), "a", masks, {})
    assert masks["a"].mask is None


def test_levels_outside_zero_to_one_are_a_schedule_error():
    with pytest.raises(ScheduleError, match="fraction"):
        SparsityLevelParameterPruner("lvl", levels={"a": 1.5})
