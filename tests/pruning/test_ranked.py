"""L1/L2 ranked structure pruners: prune whole filters, channels or rows chosen by magnitude rank."""
import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.pruning.ranked import L1RankedStructureParameterPruner, L2RankedStructureParameterPruner
from distill_ee.registry import PRUNERS


def zeroed_filters(mask):
    return mask.reshape(mask.size(0), -1).sum(dim=1).eq(0).nonzero().flatten().tolist()


def zeroed_channels(mask):
    return mask.transpose(0, 1).reshape(mask.size(1), -1).sum(dim=1).eq(0).nonzero().flatten().tolist()


def test_l1_filters_prunes_the_requested_number_of_weakest_filters():
    torch.manual_seed(0)
    w = torch.randn(10, 4, 3, 3)
    pruner = L1RankedStructureParameterPruner("f", group_type="Filters", desired_sparsity=0.3, weights=["conv.weight"])
    masks = {"conv.weight": ParameterMasker("conv.weight")}
    pruner.set_param_mask(w, "conv.weight", masks, {})
    weakest = w.abs().reshape(10, -1).mean(dim=1).argsort()[:3].sort().values.tolist()
    assert zeroed_filters(masks["conv.weight"].mask) == weakest


def test_l1_channels_prunes_input_channels_of_a_conv():
    torch.manual_seed(0)
    w = torch.randn(6, 8, 3, 3)
    pruner = L1RankedStructureParameterPruner("c", "Channels", 0.5, ["conv.weight"])
    masks = {"conv.weight": ParameterMasker("conv.weight")}
    pruner.set_param_mask(w, "conv.weight", masks, {})
    weakest = w.abs().transpose(0, 1).reshape(8, -1).mean(dim=1).argsort()[:4].sort().values.tolist()
    assert zeroed_channels(masks["conv.weight"].mask) == weakest


def test_rows_of_a_linear_weight_are_its_input_features_as_in_distiller():
    torch.manual_seed(0)
    w = torch.randn(5, 8)
    pruner = L1RankedStructureParameterPruner("r", "Rows", 0.25, ["fc.weight"])
    masks = {"fc.weight": ParameterMasker("fc.weight")}
    pruner.set_param_mask(w, "fc.weight", masks, {})
    mask = masks["fc.weight"].mask
    weakest = w.abs().mean(dim=0).argsort()[:2].sort().values.tolist()
    assert mask.sum(dim=0).eq(0).nonzero().flatten().tolist() == weakest


def test_l2_pruner_ranks_by_l2_norm():
    w = torch.zeros(2, 4, 1, 1)
    w[0, :, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    w[1, :, 0, 0] = torch.tensor([2.1, 0.0, 0.0, 0.0])
    masks = {"w": ParameterMasker("w")}
    L2RankedStructureParameterPruner("l2", "Filters", 0.5, ["w"]).set_param_mask(w, "w", masks, {})
    assert zeroed_filters(masks["w"].mask) == [0]
    L1RankedStructureParameterPruner("l1", "Filters", 0.5, ["w"]).set_param_mask(w, "w", masks, {})
    assert zeroed_filters(masks["w"].mask) == [1]


def test_a_fraction_too_small_for_one_group_leaves_the_mask_unchanged():
    masks = {"w": ParameterMasker("w")}
    L1RankedStructureParameterPruner("f", "Filters", 0.1, ["w"]).set_param_mask(torch.randn(4, 2, 1, 1), "w", masks, {})
    assert masks["w"].mask is None


def test_leader_dependency_prunes_the_leaders_channels_in_every_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 1))
    names = ["0.weight", "1.weight"]
    pruner = L1RankedStructureParameterPruner("lead", "Channels", 0.5, names, group_dependency="Leader")
    masks = {n: ParameterMasker(n) for n in names}
    params = dict(model.named_parameters())
    pruner.set_param_mask(params["1.weight"], "1.weight", masks, {"model": model})
    pruner.set_param_mask(params["0.weight"], "0.weight", masks, {"model": model})
    leader_weakest = params["0.weight"].abs().transpose(0, 1).reshape(6, -1).mean(1).argsort()[:3].sort().values
    assert zeroed_channels(masks["0.weight"].mask) == leader_weakest.tolist()
    assert torch.equal(masks["1.weight"].mask, masks["0.weight"].mask)


def test_weights_not_listed_are_not_handled():
    pruner = L1RankedStructureParameterPruner("f", "Filters", 0.5, ["a"])
    masks = {"b": ParameterMasker("b")}
    pruner.set_param_mask(torch.randn(4, 2, 1, 1), "b", masks, {})
    assert masks["b"].mask is None and pruner.handles("a") and not pruner.handles("b")


def test_constructed_from_a_registry_name_with_distillers_keywords():
    cls = PRUNERS.get("L2RankedStructureParameterPruner")
    pruner = cls(name="p", group_type="3D", desired_sparsity=0.5, weights=["w"], group_dependency=None, kwargs=None)
    assert pruner.desired_sparsity == 0.5 and pruner.params_names == ["w"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group_type": "Block"}, "did you mean 'Blocks'"),
        ({"group_type": "Blocks"}, "needs kwargs with block_shape"),
        ({"group_dependency": "Follower"}, "group_dependency"),
        ({"desired_sparsity": 2}, "desired_sparsity"),
        ({"weights": []}, "weights"),
    ],
)
def test_bad_arguments_are_schedule_errors(kwargs, message):
    args = {"name": "p", "group_type": "Filters", "desired_sparsity": 0.5, "weights": ["w"], **kwargs}
    with pytest.raises(ScheduleError, match=message):
        L1RankedStructureParameterPruner(**args)
