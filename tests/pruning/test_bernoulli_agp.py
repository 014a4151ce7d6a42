"""BernoulliFilterPruner_AGP: a fresh Bernoulli drop per filter with the AGP target as drop probability."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.agp import BernoulliFilterPruner_AGP, agp_target_sparsity
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.registry import PRUNERS

META = {"starting_epoch": 0, "ending_epoch": 11, "frequency": 1}


def mask_at(pruner, param, epoch):
    masks = {"w": ParameterMasker("w")}
    pruner.set_param_mask(param, "w", masks, {**META, "current_epoch": epoch})
    return masks["w"].mask


def test_the_mask_is_distillers_bernoulli_draw_scaled_by_filters_over_kept():
    w = torch.randn(6, 2, 3, 3)
    pruner = BernoulliFilterPruner_AGP("d", 0.1, 0.5, "Filters", ["w"])
    torch.manual_seed(7)
    mask = mask_at(pruner, w, 5)
    torch.manual_seed(7)
    target = agp_target_sparsity(0.1, 0.5, 5, 0, 11, 1)
    binary_map = torch.bernoulli(torch.as_tensor([1 - target] * 6))  # Distiller's draw, written out
    expected = binary_map.reshape(6, 1, 1, 1).expand(6, 2, 3, 3) / (binary_map.sum() / 6)
    assert torch.allclose(mask, expected)


def test_the_same_seed_draws_the_same_filters():
    w = torch.randn(32, 2, 3, 3)
    pruner = BernoulliFilterPruner_AGP("d", 0.1, 0.5, "3D", ["w"])
    torch.manual_seed(1)
    first = mask_at(pruner, w, 3)
    torch.manual_seed(1)
    assert torch.equal(first, mask_at(pruner, w, 3))


@pytest.mark.parametrize("epoch", [0, 4, 10])
def test_the_dropped_fraction_follows_the_agp_target(epoch):
    torch.manual_seed(0)
    w = torch.randn(20000, 1, 1, 1)
    dropped = float((mask_at(BernoulliFilterPruner_AGP("d", 0.05, 0.5, "Filters", ["w"]), w, epoch) == 0)
                    .float().mean())
    assert dropped == pytest.approx(agp_target_sparsity(0.05, 0.5, epoch, 0, 11, 1), abs=0.015)


def test_it_is_registered_and_ranks_filters_only():
    assert PRUNERS.get("BernoulliFilterPruner_AGP") is BernoulliFilterPruner_AGP
    with pytest.raises(ScheduleError, match="group_type 'Channels' cannot be ranked.*valid: 3D, Filters"):
        BernoulliFilterPruner_AGP("d", 0.1, 0.5, "Channels", ["w"])
