"""fold_batchnorm: a pruner ranks a Conv2d weight scaled by its batch norm's gamma / sqrt(var + eps)."""
import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.policies.base import HookContext
from distill_ee.policies.pruning import PRUNING_POLICY_ARGS, PruningPolicy
from distill_ee.pruning.masks import create_masks
from distill_ee.pruning.ranked import L1RankedStructureParameterPruner
from distill_ee.schedule import schedule_from_text


def conv_bn():
    model = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
        model[1].weight.copy_(torch.tensor([4.0, 3.0, 0.5, 1.0]))  # gamma
        model[1].running_var.copy_(torch.tensor([1.0, 1.0, 1.0, 3.0]))
    return model


def masks_after_epoch(model, fold):
    pruner = L1RankedStructureParameterPruner("f", "Filters", 0.5, ["0.weight"])
    policy = PruningPolicy(pruner, {"fold_batchnorm": fold})
    policy.starting_epoch, policy.ending_epoch, policy.frequency = 0, 1, 1
    masks = create_masks(model)
    policy.on_epoch_begin(HookContext(epoch=0, model=model, masks=masks))
    return masks["0.weight"].mask[:, 0, 0, 0]


def test_the_ranking_uses_the_folded_weights_and_masks_the_real_ones():
    model = conv_bn()
    eps = model[1].eps
    folded = torch.tensor([1.0, 2.0, 3.0, 4.0]) * torch.tensor([4.0, 3.0, 0.5, 1.0]) / torch.sqrt(
        torch.tensor([1.0, 1.0, 1.0, 3.0]) + eps)  # Distiller's w * (gamma / sqrt(running_var + eps))
    keep = (folded > torch.topk(folded, 2, largest=False)[0][-1]).float()
    assert torch.equal(keep, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.equal(masks_after_epoch(model, True), keep)
    assert torch.equal(model[0].weight[:, 0, 0, 0], torch.tensor([1.0, 2.0, 0.0, 0.0]))


def test_without_folding_the_raw_weights_rank():
    assert torch.equal(masks_after_epoch(conv_bn(), False), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_a_conv_without_a_batch_norm_is_ranked_unfolded():
    model = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
    assert torch.equal(masks_after_epoch(model, True), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_fold_batchnorm_is_a_pruning_policy_argument():
    assert "fold_batchnorm" in PRUNING_POLICY_ARGS


SCHEDULE = """
pruners:
  f:
    class: L1RankedStructureParameterPruner
    group_type: Filters
    desired_sparsity: 0.5
    weights: [0.weight]
policies:
  - pruner:
      instance_name: f
      args:
        {arg}: True
    epochs: [0]
"""


def test_a_schedule_folds_batchnorm_when_its_policy_says_so():
    model = conv_bn()
    schedule_from_text(model, None, SCHEDULE.format(arg="fold_batchnorm"), file="s.yaml").on_epoch_begin(0)
    assert torch.equal(model[0].weight[:, 0, 0, 0], torch.tensor([1.0, 2.0, 0.0, 0.0]))


def test_a_misspelt_policy_argument_gets_a_did_you_mean():
    with pytest.raises(ScheduleError, match=r"s\.yaml:12: policies\[0\]\.pruner\.args\.fold_batchnom: .*"
                                            r"did you mean 'fold_batchnorm'"):
        schedule_from_text(conv_bn(), None, SCHEDULE.format(arg="fold_batchnom"), file="s.yaml")
