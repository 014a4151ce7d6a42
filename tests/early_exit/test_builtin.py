"""Built-in classifiers: a model declares them once, an early_exits instance refers to them by `attach: builtin`."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit import EarlyExits, parse_early_exit_config
from distill_ee.early_exit.builtin import declared_exits, expand_builtin
from distill_ee.errors import ScheduleError

HEAD = ["flatten", {"type": "linear"}]


class Declaring(nn.Module):
    """Three linear blocks; the classifiers after the first two are declared, the last is the model's output."""

    def __init__(self):
        super().__init__()
        self.b1, self.b2, self.b3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.b3(self.b2(self.b1(x))))

    def builtin_exits(self):
        return {"head1": {"attach": "b1", "branch": HEAD}, "head2": {"attach": "b2", "branch": HEAD}}


def attach(config, model=None):
    model = model or Declaring()
    return EarlyExits.from_config(config, model, num_classes=3, input_shape=(8,))


def test_attach_builtin_makes_every_declared_classifier_an_exit():
    exits = attach({"attach": "builtin"})
    assert exits.exit_names == ["head1", "head2"]
    assert exits.exit_set.attach == ["b1", "b2"]
    assert exits.spec.exits[0].loss_weight.start == 1.0 and exits.thresholds == [None, None]


def test_settings_are_given_per_classifier_by_name():
    exits = attach({"attach": "builtin", "criterion": "max_prob",
                    "exits": {"head2": {"threshold": 0.8, "loss_weight": 0.3, "criterion": "margin"}}})
    assert exits.thresholds == [None, 0.8]
    assert exits.criteria == ["max_prob", "margin"]
    assert exits.spec.exits[1].loss_weight.start == 0.3


def test_own_branches_are_sorted_between_the_builtin_ones():
    model = Declaring()
    model.mid = nn.Identity()
    model.forward = lambda x: model.fc(model.b3(model.b2(model.mid(model.b1(x)))))
    exits = attach({"attach": "builtin", "exits": {"mine": {"attach": "mid", "branch": HEAD}}}, model)
    assert exits.exit_names == ["head1", "mine", "head2"]
    assert exits.exit_set.attach == ["b1", "mid", "b2"]


def test_one_builtin_classifier_is_picked_by_name():
    exits = attach({"exits": {"head2": {"attach": "builtin", "threshold": 0.5},
                              "mine": {"attach": "b3", "branch": HEAD}}})
    assert exits.exit_names == ["head2", "mine"]
    assert exits.exit_set.attach == ["b2", "b3"]


def test_the_recorded_config_is_the_expanded_one():
    exits = attach({"attach": "builtin"})
    config = exits.config
    assert "attach" not in config
    assert config["exits"]["head1"]["attach"] == "b1" and config["exits"]["head1"]["branch"] == ["flatten", "linear"]
    assert parse_early_exit_config(config).names == ["head1", "head2"]


def test_an_instance_without_builtin_references_is_left_alone():
    config = {"exits": {"x": {"attach": "b1", "branch": HEAD}}}
    assert expand_builtin(config, Declaring()) == config


@pytest.mark.parametrize("config,path,words", [
    ({"exits": {"head3": {"attach": "builtin"}}}, "exits.head3.attach", "no built-in classifier named 'head3'"),
    ({"attach": "builtin", "exits": {"head1": {"branch": HEAD}}}, "exits.head1.branch", "drop `branch`"),
    ({"attach": "all"}, "attach", "can only be `builtin`"),
])
def test_bad_references_are_located_errors(config, path, words):
    with pytest.raises(ScheduleError) as err:
        attach(config)
    assert err.value.path == path and words in err.value.message


def test_a_misspelt_builtin_name_gets_a_suggestion():
    with pytest.raises(ScheduleError) as err:
        attach({"exits": {"haed1": {"attach": "builtin"}}})
    assert "head1" in str(err.value)


def test_a_model_that_declares_nothing_says_so():
    plain = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
    assert declared_exits(plain) == {}
    with pytest.raises(ScheduleError) as err:
        attach({"attach": "builtin"}, plain)
    assert err.value.path == "attach" and "declares no built-in classifiers" in err.value.message


def test_training_the_builtin_exits_updates_their_weights():
    torch.manual_seed(0)
    model = Declaring()
    exits = attach({"attach": "builtin"}, model)
    before = exits.exit_set["head1"][1].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = exits.multi_exit_model().train().simulate(torch.randn(4, 8))
    sum(nn.functional.cross_entropy(z, torch.tensor([0, 1, 2, 0])) for z in logits).backward()
    opt.step()
    assert not torch.equal(before, exits.exit_set["head1"][1].weight)
