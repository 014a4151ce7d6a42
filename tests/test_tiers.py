"""The test tiers: ``-m "not slow"`` is the quick local run, a plain run (CI) runs everything; the slow marker
stays registered and stays on the tests known to be slow."""
import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: modules that run the app end to end, start processes or fuzz in every test
SLOW_MODULES = ["tests/apputils/test_app_routing.py", "tests/apputils/test_app_distributed.py",
                "tests/test_distributed.py", "tests/routing/test_distributed_routing.py",
                "tests/deploy/test_session.py", "tests/schedule/test_fuzz.py", "tests/test_package.py"]
#: slow tests in modules whose other tests are quick: (module, test function)
SLOW_TESTS = [("tests/apputils/test_hardening.py", "test_through_the_real_entry_point_no_traceback"),
              ("tests/apputils/test_check.py", "test_the_command_runs_as_a_module_and_through_compress_classifier"),
              ("tests/apputils/test_app.py", "test_calibrate_and_export_a_trained_checkpoint")]


def pytest_ini() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "pytest.ini")
    return config


def is_slow_mark(node: ast.expr) -> bool:
    """True for the expression ``pytest.mark.slow``."""
    return ast.unparse(node) == "pytest.mark.slow"


def test_the_slow_marker_is_registered():
    markers = pytest_ini()["pytest"]["markers"].strip().splitlines()
    assert any(line.startswith("slow:") and 'deselect with -m "not slow"' in line for line in markers)


def test_every_full_run_lists_the_slowest_tests():
    assert "--durations=25" in pytest_ini()["pytest"]["addopts"].split()


@pytest.mark.parametrize("path", SLOW_MODULES)
def test_modules_slow_throughout_carry_the_marker(path):
    tree = ast.parse((ROOT / path).read_text())
    marks = [node.value for node in tree.body if isinstance(node, ast.Assign)
             and [ast.unparse(t) for t in node.targets] == ["pytestmark"]]
    assert len(marks) == 1 and is_slow_mark(marks[0]), path


@pytest.mark.parametrize("path, name", SLOW_TESTS)
def test_slow_tests_of_quick_modules_carry_the_marker(path, name):
    tree = ast.parse((ROOT / path).read_text())
    (test,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    assert any(is_slow_mark(decorator) for decorator in test.decorator_list), f"{path}::{name}"
