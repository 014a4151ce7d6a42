"""RegularizationPolicy: the penalty joins the loss; thresholding zeroes weak groups once or for good."""
import pytest
import torch
from torch import nn

from distill_ee.policies.base import HookContext, PolicyLoss
from distill_ee.policies.regularization import RegularizationPolicy
from distill_ee.pruning.masks import create_masks
from distill_ee.regularization.group_lasso import GroupLassoRegularizer
from distill_ee.regularization.l1 import L1Regularizer


def linear_model():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.1, 0.0, -0.1], [0.5, 0.5, 0.5]]))
    return model


def scheduled(policy, starting_epoch, ending_epoch, frequency=1):
    policy.starting_epoch, policy.ending_epoch, policy.frequency = starting_epoch, ending_epoch, frequency
    return policy


def test_before_backward_pass_adds_the_penalty_as_a_named_component():
    model = linear_model()
    policy = RegularizationPolicy(L1Regularizer("l1", model, {"0.weight": 0.01}))
    ctx = HookContext(epoch=0, model=model, masks=create_masks(model), loss=torch.tensor(2.0))
    result = policy.before_backward_pass(ctx)
    assert isinstance(result, PolicyLoss)
    assert result.overall_loss.item() == pytest.approx(2.0 + 0.01 * 5.7)
    [component] = result.loss_components
    assert component.name == "L1Regularizer_loss"
    assert component.value.item() == pytest.approx(0.057)
    result.overall_loss.backward()
    assert model[0].weight.grad[0].tolist() == pytest.approx([0.01, -0.01, 0.01])


def minibatch_end(policy, model, masks, epoch, minibatch_id, minibatches=2):
    ctx = HookContext(epoch=epoch, model=model, masks=masks, minibatch_id=minibatch_id,
                      minibatches_per_epoch=minibatches)
    policy.on_minibatch_end(ctx)


def test_thresholding_zeroes_weak_rows_once_without_leaving_a_mask():
    model = linear_model()
    masks = create_masks(model)
    reg = GroupLassoRegularizer("gl", model, {"0.weight": [0.3, "Rows"]}, threshold_criteria="Mean_Abs")
    policy = scheduled(RegularizationPolicy(reg), 0, 3)
    policy.on_epoch_begin(HookContext(epoch=0, model=model, masks=masks))
    minibatch_end(policy, model, masks, 0, 0)
    assert model[0].weight[1].eq(0).all() and model[0].weight[0].ne(0).all()
    assert masks["0.weight"].mask is None


def test_thresholding_keeps_an_existing_pruning_mask():
    model = linear_model()
    masks = create_masks(model)
    pruning_mask = torch.ones(3, 3)
    pruning_mask[2, 2] = 0
    masks["0.weight"].mask = pruning_mask
    reg = GroupLassoRegularizer("gl", model, {"0.weight": [0.3, "Rows"]}, threshold_criteria="Max")
    policy = scheduled(RegularizationPolicy(reg), 0, 3)
    minibatch_end(policy, model, masks, 0, 0)
    assert model[0].weight[1].eq(0).all()
    assert masks["0.weight"].mask is pruning_mask
    assert not masks["0.weight"].is_regularization_mask


def test_keep_mask_keeps_the_threshold_mask_after_the_last_minibatch_of_the_last_epoch():
    model = linear_model()
    masks = create_masks(model)
    pruning_mask = torch.ones(3, 3)
    pruning_mask[2, 2] = 0
    masks["0.weight"].mask = pruning_mask
    reg = GroupLassoRegularizer("gl", model, {"0.weight": [0.3, "Rows"]}, threshold_criteria="Mean_Abs")
    policy = scheduled(RegularizationPolicy(reg, keep_mask=True), 0, 2)
    policy.on_epoch_begin(HookContext(epoch=1, model=model, masks=masks))
    minibatch_end(policy, model, masks, 1, 0)
    assert masks["0.weight"].mask is pruning_mask
    minibatch_end(policy, model, masks, 1, 1)
    kept = masks["0.weight"].mask
    assert kept[1].eq(0).all() and kept[2, 2] == 0 and kept[0].eq(1).all()
    assert not masks["0.weight"].is_regularization_mask


def test_state_dict_round_trip():
    model = linear_model()
    policy = scheduled(RegularizationPolicy(L1Regularizer("l1", model, {"0.weight": 0.1})), 0, 1)
    policy.on_epoch_begin(HookContext(epoch=0, model=model))
    restored = RegularizationPolicy(L1Regularizer("l1", model, {"0.weight": 0.1}))
    restored.load_state_dict(policy.state_dict())
    assert restored.is_last_epoch and RegularizationPolicy.kind == "regularizer"
