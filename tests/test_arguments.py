"""Argument annotations: what a schedule value must be follows from a constructor's type hints."""
from typing import Annotated, Dict, List, Literal, Optional, Union

import pytest
import torch

from distill_ee.arguments import (ArgumentError, Fraction, NonFinite, ParamMap, ParamNames, PositiveInt, bind,
                                  check_value, signature_of)
from distill_ee.errors import ScheduleError
from distill_ee.schedule import schedule_from_text


class Names:
    """A NameSource over a fixed list of parameter names."""

    def __init__(self, params):
        self.params, self.seen = params, []

    def parameter_names(self):
        return list(self.params)

    def module_names(self):
        return sorted({p.rpartition(".")[0] for p in self.params})

    def record_match(self, pattern, hits):
        self.seen.append((pattern, hits))


def error_of(hint, value, names=None):
    with pytest.raises(ArgumentError) as info:
        check_value(hint, value, names)
    return info.value


def test_plain_types_are_checked_and_floats_must_be_finite():
    assert check_value(float, 3) == 3 and check_value(int, 3) == 3 and check_value(bool, True) is True
    assert error_of(int, True).message == "must be an integer, got bool True"
    assert error_of(float, "1e-3").message == "must be a number, got str '1e-3'"
    assert error_of(float, float("inf")).message == "must be a number, got inf"
    assert check_value(Annotated[float, NonFinite()], float("inf")) == float("inf")


def test_containers_optional_union_and_literal():
    assert check_value(List[int], [1, 2]) == [1, 2]
    err = error_of(List[int], [1, "x"])
    assert err.path == (1,) and err.message == "must be an integer, got str 'x'"
    assert check_value(Optional[Fraction], None) is None
    assert error_of(Union[int, str], 1.5).message == "must be an integer or a string, got float 1.5"
    assert error_of(Literal["a", "b"], "c").valid == ["a", "b"]
    assert error_of(Dict[str, float], [1]).message == "must be a mapping, got list [1]"


def test_ranges_of_the_named_annotations():
    assert check_value(Fraction, 0.0) == 0.0
    assert error_of(Fraction, 1.0).message == "must be a number in [0, 1), got 1.0"
    assert error_of(PositiveInt, 0).message == "must be an integer >= 1, got 0"


def test_parameter_names_expand_patterns_in_order_without_repeats_and_are_recorded():
    names = Names(["a.weight", "a.bias", "b.weight"])
    assert check_value(ParamNames, ["*.weight", "a.weight"], names) == ["a.weight", "b.weight"]
    assert check_value(ParamNames, "module.b.weight", names) == ["b.weight"]
    assert names.seen[0] == ("*.weight", ["a.weight", "b.weight"])
    err = error_of(ParamNames, ["a.weight", "c.*"], names)
    assert err.path == (1,) and err.message == "pattern 'c.*' matches no parameter of the model"
    assert check_value(ParamMap[float], {"*.weight": 0.5, "*": 0.1}, names) == \
        {"a.weight": 0.5, "b.weight": 0.5, "*": 0.1}


def test_bind_supplies_context_parameters_and_refuses_unknown_or_missing_ones():
    class Thing:
        def __init__(self, name: str, model, size: PositiveInt, scale: float = 1.0):
            pass

    supplied = bind(Thing, {"size": 2}, owner="Thing", supply=lambda n: f"<{n}>")
    assert supplied == {"name": "<name>", "model": "<model>", "size": 2}
    assert signature_of(Thing).user_arguments == ["size", "scale"]
    with pytest.raises(ArgumentError, match="missing argument 'size' of Thing"):
        bind(Thing, {}, owner="Thing")
    with pytest.raises(ArgumentError, match="unknown argument of Thing") as info:
        bind(Thing, {"size": 1, "scal": 2.0}, owner="Thing")
    assert info.value.path == ("scal",) and info.value.suggestions == ["scale"]


def test_hints_torch_cannot_resolve_are_still_checked_one_by_one():
    model = torch.nn.Linear(2, 2)
    text = """version: 1
lr_schedulers:
  steps: {class: MultiStepLR, milestones: [5], gamma: {k: 0.3}}
policies:
  - lr_scheduler: {instance_name: steps}
    epochs: [0]
"""
    with pytest.raises(ScheduleError, match=r"s.yaml:3: lr_schedulers.steps.gamma: must be a number, got dict"):
        schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), text, file="s.yaml")
    cyclic = text.replace("MultiStepLR, milestones: [5], gamma: {k: 0.3}",
                          "CyclicLR, base_lr: 0.01, max_lr: 0.1, mode: sawtooth")
    with pytest.raises(ScheduleError, match=r"mode: 'sawtooth' is not valid .*valid: triangular"):
        schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), cyclic, file="s.yaml")
