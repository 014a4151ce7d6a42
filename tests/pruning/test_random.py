"""Randomised structure pruners: Bernoulli filter dropping and a random level ranked by L1."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.pruning.random import BernoulliFilterPruner, RandomLevelStructureParameterPruner
from distill_ee.registry import PRUNERS


def bernoulli_mask(seed, n_filters=400, fraction=0.25):
    torch.manual_seed(seed)
    pruner = BernoulliFilterPruner("drop", group_type="Filters", desired_sparsity=fraction, weights=["w"])
    masks = {"w": ParameterMasker("w")}
    pruner.set_param_mask(torch.randn(n_filters, 2, 1, 1), "w", masks, {})
    return masks["w"].mask


def test_bernoulli_drops_whole_filters_and_scales_the_kept_ones():
    mask = bernoulli_mask(0)
    per_filter = mask.reshape(400, -1)
    kept = per_filter[:, 0].ne(0)
    assert (per_filter == per_filter[:, :1]).all()
    assert per_filter[kept, 0] == pytest.approx(torch.full((int(kept.sum()),), 400 / kept.sum().item()))
    assert 0.15 < 1 - kept.float().mean().item() < 0.35


def test_bernoulli_is_reproducible_given_the_seed():
    assert torch.equal(bernoulli_mask(3), bernoulli_mask(3))
    assert not torch.equal(bernoulli_mask(3), bernoulli_mask(4))


def test_random_level_prunes_a_level_inside_the_range_of_weakest_filters():
    torch.manual_seed(0)
    pruner = RandomLevelStructureParameterPruner("rnd", "Filters", sparsity_range=[0.2, 0.6], weights=["w"])
    w = torch.randn(50, 2, 3, 3)
    masks = {"w": ParameterMasker("w")}
    seen = set()
    for _ in range(5):
        pruner.set_param_mask(w, "w", masks, {})
        zeroed = masks["w"].mask.reshape(50, -1).sum(dim=1).eq(0)
        n = int(zeroed.sum())
        assert 10 <= n <= 30
        weakest = w.abs().reshape(50, -1).mean(dim=1).argsort()[:n]
        assert zeroed[weakest].all()
        seen.add(n)
    assert len(seen) > 1


def test_registered_names_and_bad_range():
    assert PRUNERS.get("BernoulliFilterPruner") is BernoulliFilterPruner
    with pytest.raises(ScheduleError, match="sparsity_range"):
        RandomLevelStructureParameterPruner("rnd", "Filters", sparsity_range=[0.6, 0.2], weights=["w"])
