"""SensitivityPruner: threshold = sensitivity x std of the weight, the std measured once."""
import pytest
import torch

from distill_ee.pruning.masks import ParameterMasker
from distill_ee.pruning.sensitivity import SensitivityPruner


def test_threshold_is_sensitivity_times_the_standard_deviation():
    torch.manual_seed(0)
    w = torch.randn(20, 20)
    pruner = SensitivityPruner("s", sensitivities={"w": 0.5})
    masks = {"w": ParameterMasker("w")}
    pruner.set_param_mask(w, "w", masks, {})
    expected = (w.abs() > 0.5 * w.std()).float()
    assert torch.equal(masks["w"].mask, expected)


def test_the_standard_deviation_is_kept_from_the_first_pruning():
    torch.manual_seed(0)
    w = torch.randn(20, 20)
    pruner = SensitivityPruner("s", sensitivities={"*": 1.0})
    masks = {"w": ParameterMasker("w")}
    pruner.set_param_mask(w, "w", masks, {})
    first_std = w.std().item()
    pruner.set_param_mask(w * 0.1, "w", masks, {})
    assert torch.equal(masks["w"].mask, ((w * 0.1).abs() > first_std).float())


def test_state_dict_carries_the_measured_deviation_to_a_new_pruner():
    torch.manual_seed(0)
    w = torch.randn(10, 10)
    pruner = SensitivityPruner("s", sensitivities={"w": 1.0})
    pruner.set_param_mask(w, "w", {"w": ParameterMasker("w")}, {})
    resumed = SensitivityPruner("s", sensitivities={"w": 1.0})
    resumed.load_state_dict(pruner.state_dict())
    assert resumed.stddev["w"] == pytest.approx(w.std().item())


def test_weights_without_a_sensitivity_are_left_alone():
    pruner = SensitivityPruner("s", sensitivities={"a": 1.0})
    masks = {"b": ParameterMasker("b")}
    pruner.set_param_mask(torch.randn(4), "b", masks, {})
    assert masks["b"].mask is None and not pruner.handles("b")
