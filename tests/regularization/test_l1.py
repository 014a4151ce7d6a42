"""L1Regularizer: penalty strength * sum|w| and element thresholding at the strength."""
import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.regularization.l1 import L1Regularizer
from distill_ee.registry import REGULARIZERS


def test_penalty_is_strength_times_the_sum_of_magnitudes():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    reg = L1Regularizer("l1", None, reg_regims={"w": 0.1})
    loss = reg.loss(w, "w", torch.tensor(1.0), {})
    assert loss.item() == pytest.approx(1.0 + 0.1 * 3.5)
    loss.backward()
    assert torch.allclose(w.grad, torch.tensor([[0.1, -0.1], [0.1, 0.0]]))


def test_weights_not_named_add_nothing():
    reg = L1Regularizer("l1", None, reg_regims={"w": 0.1})
    assert reg.loss(torch.ones(3), "other", torch.tensor(2.0), {}).item() == 2.0


def test_threshold_sets_a_one_shot_mask_keeping_elements_above_the_strength():
    reg = L1Regularizer("l1", None, reg_regims={"w": 0.3}, threshold_criteria="Mean_Abs")
    masks = {"w": ParameterMasker("w")}
    w = torch.tensor([0.1, -0.5, 0.3, 0.9])
    reg.threshold(w, "w", masks)
    assert masks["w"].mask.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert masks["w"].is_regularization_mask


def test_without_threshold_criteria_no_mask_is_set():
    reg = L1Regularizer("l1", nn.Linear(2, 2), reg_regims={"weight": 0.3})
    masks = {"weight": ParameterMasker("weight")}
    reg.threshold(torch.zeros(2, 2), "weight", masks)
    assert masks["weight"].mask is None


def test_registry_and_bad_arguments():
    assert REGULARIZERS.get("L1Regularizer") is L1Regularizer
    with pytest.raises(ScheduleError, match="threshold_criteria"):
        L1Regularizer("l1", None, {"w": 0.1}, threshold_criteria="Median")
    with pytest.raises(ScheduleError, match="reg_regims"):
        L1Regularizer("l1", None, {"w": "strong"})
