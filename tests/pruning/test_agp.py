"""Automated Gradual Pruning: the cubic sparsity schedule and the pruners that follow it."""
import pytest
import torch

from distill_ee.errors import ScheduleError
from distill_ee.pruning.agp import (
    AutomatedGradualPruner,
    L1RankedStructureParameterPruner_AGP,
    L2RankedStructureParameterPruner_AGP,
    agp_target_sparsity,
)
from distill_ee.pruning.masks import ParameterMasker, sparsity
from distill_ee.registry import PRUNERS

# initial 0.05, final 0.8, starting_epoch 0, ending_epoch 10, frequency 2:
# span = ((10 - 0 - 1) // 2) * 2 = 8 and target(e) = 0.8 - 0.75 * (1 - e / 8) ** 3
HAND_COMPUTED = {0: 0.05, 2: 0.48359375, 4: 0.70625, 6: 0.78828125, 8: 0.8}


@pytest.mark.parametrize("epoch, expected", sorted(HAND_COMPUTED.items()))
def test_target_sparsity_follows_the_cubic_schedule(epoch, expected):
    assert agp_target_sparsity(0.05, 0.8, epoch, 0, 10, 2) == pytest.approx(expected)


def test_target_with_an_offset_start_and_frequency_one():
    # span = (14 - 4 - 1) // 1 = 9; at epoch 7: 0.5 + (0.0 - 0.5) * (1 - 3/9) ** 3 = 0.5 - 0.5 * 8/27
    assert agp_target_sparsity(0.0, 0.5, 7, 4, 14, 1) == pytest.approx(0.5 - 0.5 * 8 / 27)


def test_a_missing_frequency_counts_as_one():
    assert agp_target_sparsity(0.1, 0.9, 3, 0, 5, None) == agp_target_sparsity(0.1, 0.9, 3, 0, 5, 1)


def test_a_schedule_without_two_pruning_epochs_is_a_schedule_error():
    with pytest.raises(ScheduleError, match="AGP"):
        agp_target_sparsity(0.1, 0.5, 0, 0, 2, 2)


def test_element_wise_agp_prunes_each_epoch_to_the_target():
    torch.manual_seed(0)
    w = torch.randn(40, 25)
    pruner = AutomatedGradualPruner("agp", initial_sparsity=0.05, final_sparsity=0.8, weights=["w"])
    masks = {"w": ParameterMasker("w")}
    for epoch, target in HAND_COMPUTED.items():
        meta = {"current_epoch": epoch, "starting_epoch": 0, "ending_epoch": 10, "frequency": 2}
        pruner.set_param_mask(w, "w", masks, meta)
        assert sparsity(masks["w"].mask) == pytest.approx(int(target * 1000) / 1000)


@pytest.mark.parametrize("cls", [L1RankedStructureParameterPruner_AGP, L2RankedStructureParameterPruner_AGP])
def test_structured_agp_prunes_whole_filters_to_the_target(cls):
    torch.manual_seed(0)
    w = torch.randn(20, 3, 3, 3)
    pruner = cls("agp", initial_sparsity=0.05, final_sparsity=0.8, group_type="Filters", weights=["w"])
    masks = {"w": ParameterMasker("w")}
    for epoch, target in HAND_COMPUTED.items():
        meta = {"current_epoch": epoch, "starting_epoch": 0, "ending_epoch": 10, "frequency": 2}
        pruner.set_param_mask(w, "w", masks, meta)
        zero_filters = masks["w"].mask.reshape(20, -1).sum(dim=1).eq(0).sum().item()
        assert zero_filters == int(target * 20 + 1e-6)


def test_agp_pruners_are_registered_with_distillers_names_and_keywords():
    pruner = PRUNERS.get("L1RankedStructureParameterPruner_AGP")(
        name="p", initial_sparsity=0.1, final_sparsity=0.5, group_type="Channels", weights=["w"],
        group_dependency="Leader", kwargs=None,
    )
    assert pruner.handles("w") and pruner.pruner.group_dependency == "Leader"
    assert PRUNERS.get("AutomatedGradualPruner") is AutomatedGradualPruner


def test_final_sparsity_must_exceed_the_initial_one():
    with pytest.raises(ScheduleError, match="final_sparsity"):
        AutomatedGradualPruner("agp", initial_sparsity=0.5, final_sparsity=0.5, weights=["w"])
