"""Safe YAML reading: located values, duplicate keys and object tags refused."""
import pytest

from distill_ee.errors import ScheduleError
from distill_ee.schedule.source import format_path, parse_yaml


def test_lines_of_keys_and_items_are_remembered():
    src = parse_yaml("a: 1\nb:\n  c: [1, 2]\n  d:\n    - x\n    - y\n", file="s.yaml")
    assert src.line_of(("b", "c")) == 3
    assert src.line_of(("b", "d", 1)) == 6
    assert src.line_of(("b", "missing")) == 2


def test_duplicate_keys_are_an_error_naming_both_lines():
    with pytest.raises(ScheduleError) as info:
        parse_yaml("a:\n  x: 1\n  x: 2\n", file="s.yaml")
    assert str(info.value) == "s.yaml:3: a.x: duplicate key 'x' (first given on line 2)"


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
