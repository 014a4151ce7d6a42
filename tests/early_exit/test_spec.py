"""The early_exits schedule section: defaults, validation with YAML paths, and the plain-dict round trip."""
import pytest
import yaml

from distill_ee.early_exit.spec import AUTO, LossWeight, parse_early_exit_config
from distill_ee.errors import ScheduleError

SCHEDULE = """
criterion: entropy
final_loss_weight: auto
final_name: final
exits:
  exit1:
    attach: conv1
    branch:
      - {type: conv, out_channels: 10, kernel_size: 3, padding: 1}
      - relu
      - {type: maxpool, kernel_size: 2}
      - flatten
      - {type: linear}
    loss_weight: 0.3
    threshold: 0.5
  exit2:
    attach: module.layer1.2
    branch: [flatten, linear]
    loss_weight: {start: 0.1, end: 0.4}
    threshold: 0.8
    criterion: max_prob
"""


def parse(text: str):
    return parse_early_exit_config(yaml.safe_load(text))


def error_of(config) -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        parse_early_exit_config(config)
    return info.value


def minimal(**exit_fields):
    return {"exits": {"exit1": {"attach": "conv1", "branch": ["flatten", "linear"], **exit_fields}}}


def test_a_full_instance_parses_in_order_with_its_settings():
    spec = parse(SCHEDULE)
    assert spec.names == ["exit1", "exit2"]
    assert spec.final_loss_weight == AUTO
    assert spec.criteria() == ["entropy", "max_prob"]
    assert spec.thresholds() == [0.5, 0.8]
    assert spec.exits[0].branch[0].type == "conv"
    assert spec.exits[0].branch[0].options == {"out_channels": 10, "kernel_size": 3, "padding": 1}
    assert spec.exits[1].attach == "module.layer1.2"
    assert spec.exits[1].loss_weight == LossWeight(0.1, 0.4)


def test_defaults_are_entropy_weight_one_final_weight_one_and_no_threshold():
    spec = parse_early_exit_config(minimal())
    assert spec.criterion == "entropy"
    assert spec.final_loss_weight == 1.0
    assert spec.final_name == "final"
    assert spec.exits[0].loss_weight == LossWeight(1.0, 1.0)
    assert spec.thresholds() == [None]


def test_to_config_parses_back_to_an_equal_spec():
    spec = parse(SCHEDULE)
    again = parse_early_exit_config(spec.to_config())
    assert again == spec


def test_auto_final_weight_is_one_minus_the_exit_weights():
    spec = parse(SCHEDULE)
    weights = spec.exit_weights(0.0)
    assert weights == pytest.approx([0.3, 0.1])
    assert spec.final_weight(weights) == pytest.approx(0.6)


def test_a_ramp_goes_from_start_at_the_windows_beginning_to_end_at_its_end():
    ramp = LossWeight(0.1, 1.0)
    assert ramp.at(0.0) == pytest.approx(0.1)
    assert ramp.at(1.0) == pytest.approx(1.0)
    assert ramp.at(1 / 3) == pytest.approx(0.4)
    assert ramp.at(2.0) == pytest.approx(1.0)  # progress is clamped
    assert LossWeight(0.3, 0.3).at(0.7) == 0.3


def test_unknown_keys_name_the_path_and_suggest_the_closest():
    err = error_of({**minimal(), "critrion": "entropy"})
    assert err.path == "critrion" and err.suggestions == ["criterion"]
    err = error_of(minimal(treshold=0.5))
    assert err.path == "exits.exit1.treshold" and "threshold" in err.suggestions


def test_unknown_criterion_lists_the_registered_ones():
    err = error_of(minimal(criterion="entropi"))
    assert err.path == "exits.exit1.criterion"
    assert err.suggestions == ["entropy"]
    assert {"entropy", "max_prob", "margin", "patience"} <= set(err.valid)


def test_a_missing_attach_or_branch_is_an_error_on_the_exit():
    err = error_of({"exits": {"exit1": {"branch": ["linear"]}}})
    assert err.path == "exits.exit1" and "attach" in err.message
    err = error_of({"exits": {"exit1": {"attach": "conv1", "branch": []}}})
    assert err.path == "exits.exit1.branch"


def test_branch_layers_are_checked_for_type_and_options():
    err = error_of(minimal(branch=["flatten", {"type": "linaer"}]))
    assert err.path == "exits.exit1.branch[1]" and err.suggestions == ["linear"]
    err = error_of(minimal(branch=["flatten", {"type": "linear", "out_feature": 10}]))
    assert err.path == "exits.exit1.branch[1].out_feature" and err.suggestions == ["out_features"]
    err = error_of(minimal(branch=[{"type": "conv", "kernel_size": 3}]))
    assert err.path == "exits.exit1.branch[0]" and "out_channels" in err.message
    err = error_of(minimal(branch=[{"type": "conv", "out_channels": "ten"}]))
    assert err.path == "exits.exit1.branch[0].out_channels"


def test_thresholds_are_checked_against_the_criterion():
    assert error_of(minimal(threshold=-0.1)).path == "exits.exit1.threshold"
    assert error_of(minimal(threshold=1.5, criterion="max_prob")).path == "exits.exit1.threshold"
    assert error_of(minimal(threshold="high")).path == "exits.exit1.threshold"


def test_numeric_strings_from_yaml_are_numbers():
    spec = parse("exits: {e: {attach: conv1, branch: [flatten, linear], threshold: 1e-3}}")
    assert spec.thresholds() == [pytest.approx(1e-3)]


def test_auto_final_weight_rejects_exit_weights_above_one():
    config = {"final_loss_weight": "auto", "exits": {
        "a": {"attach": "x", "branch": ["linear"], "loss_weight": 0.6},
        "b": {"attach": "y", "branch": ["linear"], "loss_weight": {"start": 0.2, "end": 0.5}}}}
    err = error_of(config)
    assert err.path == "final_loss_weight" and "1.1" in err.message


def test_final_weight_must_be_a_number_or_auto():
    err = error_of({**minimal(), "final_loss_weight": "aut"})
    assert err.path == "final_loss_weight" and err.suggestions == ["auto"]
    assert error_of({**minimal(), "final_loss_weight": -1}).path == "final_loss_weight"


def test_loss_weights_are_non_negative_and_ramps_need_start_and_end():
    assert error_of(minimal(loss_weight=-0.5)).path == "exits.exit1.loss_weight"
    err = error_of(minimal(loss_weight={"start": 0.1}))
    assert err.path == "exits.exit1.loss_weight" and "end" in err.message
    err = error_of(minimal(loss_weight={"strat": 0.1, "end": 1}))
    assert err.path == "exits.exit1.loss_weight.strat" and err.suggestions == ["start"]


def test_patience_gives_the_patience_criterion_its_threshold():
    spec = parse_early_exit_config({**minimal(), "criterion": "patience", "patience": 2})
    assert spec.thresholds() == [2]
    err = error_of({**minimal(), "criterion": "patience"})
    assert "patience: k" in err.message
    err = error_of({**minimal(), "patience": 2})
    assert err.path == "patience"
    assert error_of({**minimal(), "criterion": "patience", "patience": 0}).path == "patience"


def test_exit_names_must_be_identifiers_distinct_from_the_final_name():
    err = error_of({"exits": {"exit.1": {"attach": "a", "branch": ["linear"]}}})
    assert err.path == "exits.exit.1"
    err = error_of({"final_name": "out", "exits": {"out": {"attach": "a", "branch": ["linear"]}}})
    assert "final" in err.message


def test_stages_must_be_a_list_of_names():
    assert parse_early_exit_config({**minimal(), "stages": ["conv1", "fc"]}).stages == ["conv1", "fc"]
    assert error_of({**minimal(), "stages": "conv1"}).path == "stages"


def test_the_class_key_is_tolerated_and_other_shapes_are_errors():
    assert parse_early_exit_config({"class": "EarlyExit", **minimal()}).names == ["exit1"]
    assert error_of({"exits": []}).path == "exits"
    assert error_of({"exits": {}}).path == "exits"
    assert error_of({"criterion": "entropy"}).path == ""
