"""Attaching exits to a live model: names kept, attach points checked, hooks only when wanted."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_ee.early_exit.attach import detach_exits
from distill_ee.early_exit.exit_set import EXITS_ATTR, ExitSet
from distill_ee.structure import structure_steps
from distill_ee.errors import DistillEEError, ScheduleError


def test_backbone_parameter_names_are_unchanged(ee, lenet):
    before = [n for n, _ in lenet.named_parameters()]
    before_state = list(lenet.state_dict())
    ee.attach(lenet, ee.exits_config(["conv1", "conv2"], branch=["flatten", "linear"]))
    after = [n for n, _ in lenet.named_parameters()]
    assert after[:len(before)] == before
    assert all(n.startswith(f"{EXITS_ATTR}.") for n in after[len(before):])
    assert list(lenet.state_dict())[:len(before_state)] == before_state


def test_branches_live_in_one_exit_set_module_that_declares_its_attach_points(ee, lenet):
    att = ee.attach(lenet, ee.exits_config(["conv1", "conv2"], branch=["flatten", "linear"]))
    assert isinstance(getattr(lenet, EXITS_ATTR), ExitSet) and isinstance(lenet.early_exits, nn.ModuleDict)
    assert list(getattr(lenet, EXITS_ATTR)) == ["exit1", "exit2"]
    assert lenet.early_exits.exit1[1].in_features == 6 * 24 * 24
    assert att.exit_set.attach == ["conv1", "conv2"]
    assert lenet.early_exits.attach_points == {"exit1": "conv1", "exit2": "conv2"}


def test_an_unknown_attach_point_suggests_close_module_names(ee, resnet_cifar):
    with pytest.raises(ScheduleError) as info:
        ee.attach(resnet_cifar, ee.exits_config(["layer1.3"]), input_shape=(3, 32, 32))
    assert info.value.path == "exits.exit1.attach"
    assert "layer1.0" in info.value.suggestions or "layer1.1" in info.value.suggestions
    assert "layer2" in info.value.valid


def test_distiller_module_prefix_is_tolerated(ee, resnet_cifar):
    att = ee.attach(resnet_cifar, ee.exits_config(["module.layer1.1"]), input_shape=(3, 32, 32))
    assert att.exit_set.attach == ["layer1.1"]


def test_exits_must_be_listed_in_forward_order(ee, resnet_cifar):
    with pytest.raises(ScheduleError) as info:
        ee.attach(resnet_cifar, ee.exits_config(["layer2", "layer1"]), input_shape=(3, 32, 32))
    assert info.value.path == "exits.exit2.attach" and "forward order" in info.value.message


def test_an_exit_inside_another_exits_module_is_rejected(ee, resnet_cifar):
    with pytest.raises(ScheduleError) as info:
        ee.attach(resnet_cifar, ee.exits_config(["layer1.0", "layer1"]), input_shape=(3, 32, 32))
    assert info.value.path == "exits.exit2.attach" and "inside" in info.value.message


class SharedRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(self.relu(self.relu(self.conv(x))).flatten(1))


def test_a_module_run_twice_per_forward_is_rejected(ee):
    with pytest.raises(ScheduleError) as info:
        ee.attach(SharedRelu(), ee.exits_config(["relu"]))
    assert "2 times" in info.value.message


def test_a_bad_branch_is_a_schedule_error_naming_exit_and_layer(ee, lenet):
    with pytest.raises(ScheduleError) as info:
        ee.attach(lenet, ee.exits_config(["fc1"], branch=[{"type": "conv", "out_channels": 3}, "flatten", "linear"]))
    assert info.value.path == "exits.exit1.branch[0]" and "exit1" in info.value.message


def test_attaching_twice_to_one_model_is_an_error(ee, lenet):
    ee.attach(lenet, ee.exits_config(["conv1"], branch=["flatten", "linear"]))
    with pytest.raises(DistillEEError):
        ee.attach(lenet, ee.exits_config(["conv2"], branch=["flatten", "linear"]))


def count_calls(module: nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_hooks_run_branches_only_while_enabled_and_with_autograd(ee, lenet):
    att = ee.attach(lenet, ee.exits_config(["conv1"], branch=["flatten", "linear"]))
    calls = count_calls(lenet.early_exits.exit1)
    x = torch.randn(4, 1, 28, 28)
    lenet(x)
    assert calls == []  # disabled: the branch costs nothing
    att.enable()
    with torch.no_grad():
        lenet(x)
    assert calls == []  # validation pass: no autograd, no branch
    lenet(x)
    assert len(calls) == 1
    (logits,) = att.pop_logits()
    assert logits.shape == (4, 10)
    att.disable()
    lenet(x)
    assert len(calls) == 1


def test_pop_logits_without_a_training_forward_is_a_clear_error(ee, lenet):
    att = ee.attach(lenet, ee.exits_config(["conv1"], branch=["flatten", "linear"]))
    with pytest.raises(DistillEEError, match="disabled"):
        att.pop_logits()


class InplaceAfterAttach(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        x = self.conv(x)
        F.relu(x, inplace=True)
        return self.fc(x.flatten(1))


def test_an_attach_output_changed_in_place_later_is_copied_for_the_branch(ee):
    model = InplaceAfterAttach()
    att = ee.attach(model, ee.exits_config(["conv"], branch=[{"type": "conv", "out_channels": 2}, "flatten",
                                                             "linear"]))
    assert att.exit_set.copy_input == [True]
    att.enable()
    out = model(torch.randn(2, 1, 28, 28))
    (logits,) = att.pop_logits()
    (out.sum() + logits.sum()).backward()  # no "modified by an inplace operation" error
    assert model.early_exits.exit1[0].weight.grad is not None


def test_attaching_records_a_structure_step_and_detaching_removes_it(ee, lenet):
    ee.attach(lenet, ee.exits_config(["conv1"], branch=["flatten", "linear"]))
    (step,) = structure_steps(lenet)
    assert step["kind"] == "early_exits" and step["config"]["exits"]["exit1"]["attach"] == "conv1"
    assert step["num_classes"] == 10 and step["input_shape"] == [1, 28, 28]
    detach_exits(lenet)
    assert structure_steps(lenet) == []


def test_detach_restores_the_model(ee, lenet):
    names = [n for n, _ in lenet.named_parameters()]
    att = ee.attach(lenet, ee.exits_config(["conv1"], branch=["flatten", "linear"]))
    att.enable()
    att.disable()
    detach_exits(lenet)
    assert not hasattr(lenet, EXITS_ATTR)
    assert [n for n, _ in lenet.named_parameters()] == names
    assert not lenet.conv1._forward_hooks


def test_attaching_restores_each_modules_training_mode(ee, lenet):
    lenet.train()
    lenet.fc1.eval()
    ee.attach(lenet, ee.exits_config(["conv1"], branch=["flatten", "linear"]))
    assert lenet.training and lenet.conv1.training and not lenet.fc1.training
