"""Safe YAML reading: located values; duplicate keys, object tags, alias bombs, deep nesting, control
characters and unreadable values refused with their line."""
import logging

import pytest

from distill_ee.errors import ScheduleError
from distill_ee.schedule.source import MAX_DEPTH, decode_schedule, format_path, parse_yaml


def test_lines_of_keys_and_items_are_remembered():
    src = parse_yaml("a: 1\nb:\n  c: [1, 2]\n  d:\n    - x\n    - y\n", file="s.yaml")
    assert src.line_of(("b", "c")) == 3
    assert src.line_of(("b", "d", 1)) == 6
    assert src.line_of(("b", "missing")) == 2


def test_duplicate_keys_with_other_values_are_an_error_naming_both_lines():
    with pytest.raises(ScheduleError) as info:
        parse_yaml("a:\n  x: 1\n  x: 2\n", file="s.yaml")
    assert str(info.value) == "s.yaml:3: a.x: duplicate key 'x' with another value (first given on line 2)"


def test_a_duplicate_key_repeating_its_value_is_a_warning_naming_both_lines(caplog):
    with caplog.at_level(logging.WARNING, logger="distill_ee"):
        src = parse_yaml("a:\n  x: [1, 2]\n  x: [1, 2]\n", file="s.yaml")
    assert src.data == {"a": {"x": [1, 2]}}
    expected = "s.yaml:3: a.x: duplicate key 'x' repeats the value given on line 2; the repetition is ignored"
    assert src.warnings == [expected] and expected in caplog.text


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, message", [
    (LAUGHS, "s.yaml:1: f[0][3][3][7][1][5]: the schedule expands to more than 100,000 values (YAML aliases"),
    ("pruners: &a {p: *a}\n", "s.yaml:1: pruners.p: a YAML alias refers to a node that contains it"),
    ("a: " + "[" * 1500 + "]" * 1500 + "\n", f"s.yaml:1: nested more than {MAX_DEPTH} levels deep"),
    ("a: b\x00c\n", "s.yaml:1: not valid YAML: character '\\x00' is not allowed"),
    ("a: 1\nb: \x9b\n", "s.yaml:2: not valid YAML: character '\\x9b' is not allowed"),
    ("version: 2001-13-45\n", "s.yaml:1: version: cannot read '2001-13-45' as a YAML timestamp (month must be"),
    ("a: !!int abc\n", "s.yaml:1: a: cannot read 'abc' as a YAML int (invalid literal"),
    ("a: !!bool maybe\n", "s.yaml:1: a: cannot read 'maybe' as a YAML bool ('maybe' is not one of its values)"),
    ("a: {<<: 3}\n", "s.yaml:1: a: a merge key `<<` must name a mapping or a list of mappings"),
    ("a: " + "9" * 5000 + "\n", "s.yaml:1: a: cannot read '99999"),
])
def test_hostile_yaml_is_one_located_error(text, message):
    with pytest.raises(ScheduleError) as info:
        parse_yaml(text, file="s.yaml")
    assert str(info.value).startswith(message)


def test_text_that_is_not_utf8_names_its_line():
    with pytest.raises(ScheduleError) as info:
        decode_schedule(b"version: 1\npruners:\n  p: \xff\xfe\n", file="s.yaml")
    assert str(info.value) == "s.yaml:3: not UTF-8 text: byte 0xff cannot be decoded (save the schedule as UTF-8)"
    assert decode_schedule("\ufeffversion: 1\n".encode("utf-8")) == "version: 1\n"


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['true']", "!!python/name:os.system",
                                 "!custom 3"])
def test_tags_that_construct_objects_are_refused_without_running_anything(tag):
    with pytest.raises(ScheduleError, match="is not allowed"):
        parse_yaml(f"a: {tag}\n", file="s.yaml")


def test_plain_scalars_keep_their_yaml_types():
    data = parse_yaml("a: 1\nb: 0.5\nc: true\nd: null\ne: text\n").data
    assert data == {"a": 1, "b": 0.5, "c": True, "d": None, "e": "text"}


def test_broken_yaml_reports_the_line():
    with pytest.raises(ScheduleError, match=r"^s.yaml:3: not valid YAML: expected .,. or .\]."):
        parse_yaml("a: 1\nb: [1, 2\n", file="s.yaml")


def test_paths_render_like_the_documentation():
    assert format_path(("policies", 3, "pruner", "instance_name")) == "policies[3].pruner.instance_name"
