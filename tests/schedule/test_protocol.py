"""Components build themselves: a class declares its arguments with annotations, and validation, pattern
expansion, did-you-mean and located errors follow, for a class no file under distill_ee/schedule/ knows."""
import pytest
import torch
from torch import nn

from distill_ee.arguments import Fraction, ModuleName, ParamMap, ParamNames, PositiveInt, UnitInterval
from distill_ee.errors import ScheduleError
from distill_ee.pruning.pruner import Pruner
from distill_ee.registry import PRUNERS, sections
from distill_ee.schedule import schedule_from_text


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(torch.relu(self.conv1(x))), 1))


class EveryOtherPruner(Pruner):
    """A pruner only this test knows: its weight list is called ``targets``, not ``weights``."""

    def __init__(self, name: str, targets: ParamNames, amount: Fraction, stride: PositiveInt = 2,
                 scales: ParamMap[UnitInterval] = None, watch: ModuleName = "conv1"):
        super().__init__(name)
        self.targets, self.amount, self.stride, self.scales, self.watch = targets, amount, stride, scales, watch

    def handles(self, param_name):
        return param_name in self.targets

    def set_param_mask(self, param, param_name, zeros_mask_dict, meta):
        mask = torch.ones_like(param)
        mask.view(-1)[::self.stride] = 0.0
        zeros_mask_dict[param_name].mask = mask


@pytest.fixture(autouse=True)
def registered():
    PRUNERS.add("EveryOtherPruner", EveryOtherPruner)
    yield
    PRUNERS.remove("EveryOtherPruner")


def schedule(body, policy_args=""):
    return f"""version: 1
pruners:
  mine:
    class: EveryOtherPruner
{body}
policies:
  - pruner: {{instance_name: mine{policy_args}}}
    epochs: [0]
"""


def build(text):
    model = Net()
    scheduler = schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), text, file="s.yaml",
                                   example_input=torch.zeros(1, 1, 8, 8))
    return model, scheduler


def error(text):
    with pytest.raises(ScheduleError) as info:
        build(text)
    return str(info.value)


def test_a_pattern_in_an_argument_of_any_name_expands_to_the_models_parameters():
    model, scheduler = build(schedule("    targets: ['conv*.weight']\n    amount: 0.5\n"
                                      "    scales: {'module.conv2.*': 0.25}\n    watch: module.conv2"))
    pruner = scheduler.components["pruners"]["mine"]
    assert pruner.targets == ["conv1.weight", "conv2.weight"]
    assert pruner.scales == {"conv2.weight": 0.25, "conv2.bias": 0.25}
    assert pruner.watch == "conv2"
    scheduler.on_epoch_begin(0)
    assert float((model.conv1.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.05)
    assert not bool((model.fc.weight == 0).any())


def test_a_name_matching_nothing_is_a_located_error_with_did_you_mean():
    text = schedule("    targets: [conv1.weight, conv2.wieght]\n    amount: 0.5")
    assert error(text) == ("s.yaml:5: pruners.mine.targets[1]: parameter 'conv2.wieght' matches no parameter of "
                           "the model; did you mean 'conv2.weight' or 'conv1.weight' or 'fc.weight'? "
                           "(valid: conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc.weight, fc.bias)")


def test_ranges_types_and_module_names_come_from_the_annotations():
    assert error(schedule("    targets: [conv1.weight]\n    amount: 1.0")) == \
        "s.yaml:6: pruners.mine.amount: must be a number in [0, 1), got 1.0"
    assert error(schedule("    targets: [conv1.weight]\n    amount: 0.5\n    stride: 0")) == \
        "s.yaml:7: pruners.mine.stride: must be an integer >= 1, got 0"
    assert error(schedule("    targets: [conv1.weight]\n    amount: .nan")) == \
        "s.yaml:6: pruners.mine.amount: must be a number in [0, 1), got nan"
    assert error(schedule("    targets: [conv1.weight]\n    amount: 0.5\n    scales: {conv1.weight: 2}")) == \
        "s.yaml:7: pruners.mine.scales['conv1.weight']: must be a number in [0, 1], got 2"
    message = error(schedule("    targets: [conv1.weight]\n    amount: 0.5\n    watch: cnv2"))
    assert message.startswith("s.yaml:7: pruners.mine.watch: no module named 'cnv2' in the model; "
                              "did you mean 'conv2'")


def test_unknown_and_missing_arguments_list_what_the_signature_declares():
    assert error(schedule("    targets: [conv1.weight]\n    amout: 0.5")) == (
        "s.yaml:6: pruners.mine.amout: unknown argument of EveryOtherPruner; did you mean 'amount'? "
        "(valid: targets, amount, stride, scales, watch)")
    assert error(schedule("    targets: [conv1.weight]")) == (
        "s.yaml:3: pruners.mine: missing argument 'amount' of EveryOtherPruner "
        "(valid: targets, amount, stride, scales, watch)")


def test_policy_args_are_declared_by_the_policys_args_dataclass():
    body = "    targets: [conv1.weight]\n    amount: 0.5"
    assert error(schedule(body, ", args: {levels: {conv9.weight: 0.5}}")).startswith(
        "s.yaml:8: policies[0].pruner.args.levels['conv9.weight']: parameter 'conv9.weight' matches no parameter")
    assert error(schedule(body, ", args: {mini_batch_pruning_frequency: -2}")) == (
        "s.yaml:8: policies[0].pruner.args.mini_batch_pruning_frequency: must be an integer >= 0, got -2")
    pruners = next(s for s in sections() if s.name == "pruners")
    assert pruners.policy_args[:2] == ["levels", "keep_mask"]


def test_values_reach_components_as_plain_python_not_the_loaders_containers():
    _, scheduler = build(schedule("    targets: [conv1.weight]\n    amount: 0.5\n    scales: {'*': 0.5}"))
    pruner = scheduler.components["pruners"]["mine"]
    assert type(pruner.targets) is list and type(pruner.scales) is dict
