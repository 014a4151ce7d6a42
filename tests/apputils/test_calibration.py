"""The command line's calibration targets: KIND=VALUE text parsed into a CalibrationTarget, or one clear error."""
import pytest

from distill_ee.apputils.calibration import parse_target, small_split_warning, warn_small_split
from distill_ee.errors import ConfigError


@pytest.mark.parametrize("text, kind, values", [
    ("drop=0.5", "drop", (0.5,)),
    (" drop = 0 ", "drop", (0.0,)),
    ("macs=0.4", "macs", (0.4,)),
    ("MACS=40%", "macs", (0.4,)),
    ("proportions=0.5,0.3", "proportions", (0.5, 0.3)),
    ("proportions=0,1", "proportions", (0.0, 1.0)),
])
def test_targets_are_parsed_from_the_command_line_text(text, kind, values):
    target = parse_target(text)
    assert target.kind == kind and target.values == pytest.approx(values)
    assert parse_target(target.text) == target


@pytest.mark.parametrize("text, message", [
    ("", "expected KIND=VALUE"),
    ("drop", "expected KIND=VALUE"),
    ("dorp=1", "did you mean 'drop'"),
    ("speed=2", "valid: drop, macs, proportions"),
    ("drop=abc", "'abc' is not a number"),
    ("drop=nan", "not a finite number"),
    ("drop=-1", "between 0 and 100"),
    ("drop=1,2", "takes one number"),
    ("macs=0", r"in \(0, 1\]"),
    ("macs=40", r"in \(0, 1\]"),
    ("proportions=0.5,-0.1", r"in \[0, 1\]"),
    ("proportions=0.7,0.5", "sum to 1.2"),
])
def test_bad_targets_are_one_clear_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_target(text)


def test_a_drop_target_a_small_validation_split_cannot_support_is_warned_about():
    message = small_split_warning(parse_target("drop=0.5"), 400)
    assert "400 images" in message and "no drop below 1.14 points" in message
    assert "--ee-confidence 0.9" in message and "drop=1.14" in message
    assert small_split_warning(parse_target("drop=0.5"), 5000) is None  # 2,500 test images certify 0.09
    assert small_split_warning(parse_target("drop=2"), 400) is None
    assert small_split_warning(parse_target("macs=0.5"), 400) is None  # a budget makes no accuracy promise


def test_the_warning_is_logged_when_calibrating_without_a_guarantee(caplog):
    with caplog.at_level("WARNING", logger="distill_ee"):
        warn_small_split(parse_target("drop=0.5"), 400)
    assert any("too small to support drop=0.5" in r.getMessage() for r in caplog.records)
