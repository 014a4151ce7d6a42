"""``distill-ee check SCHEDULE --model PACKAGE.MODULE:CALLABLE``: the plan of a schedule on the user's own model
(token ids included), and each bad value of the model flags as one located line with exit status 2."""
import sys

import pytest

from distill_ee.apputils.cli import main

SCHEDULE = """\
version: 1
early_exits:
  exits:
    class: EarlyExit
    exits:
      exit1: {attach: encoder.layers.1, branch: [flatten, linear], threshold: 0.5}
policies:
  - early_exit: {instance_name: exits}
    starting_epoch: 0
    ending_epoch: 4
"""
TEXT = ["--model", "text_support:TextClassifier", "--input-shape", "6", "--input-dtype", "long",
        "--input-range", "0,50"]


def row(text: str, first: str) -> list:
    """The cells of the table row of ``text`` whose first cell is ``first``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


@pytest.fixture
def schedule(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCHEDULE)
    return str(path)


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """A module of the user's own, importable from a folder on sys.path."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def tiny(width=8):\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, width), nn.ReLU(), "
        "nn.Linear(width, 3))\n"
        "def not_a_model():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models"


def test_the_plan_of_a_token_id_model_is_the_report_zoo_models_get(schedule, capsys):
    assert main(["check", schedule, *TEXT]) == 0
    text = capsys.readouterr().out
    assert ("valid for --model text_support:TextClassifier (input (N, 6) int64 in [0, 50), output (N, 3)); "
            "1 policies") in text
    assert row(text, "exit1")[:5] == ["exit1", "encoder.layers.1", "(N, 6, 16)", "entropy", "0.5"]
    assert row(text, "final")[1] == "(the model's output)"


def test_model_arguments_are_given_as_json(tmp_path, own_module, capsys):
    path = tmp_path / "exit.yaml"
    path.write_text(SCHEDULE.replace("encoder.layers.1", "'2'"))
    assert main(["check", str(path), "--model", f"{own_module}:tiny", "--model-args", '{"width": 5}',
                 "--input-shape", "3,4"]) == 0
    assert row(capsys.readouterr().out, "exit1")[:3] == ["exit1", "2", "(N, 5)"]


@pytest.mark.parametrize("flags, message", [
    (["--model", "no_such_module_xyz:f", "--input-shape", "4"], "cannot import 'no_such_module_xyz'"),
    (["--model", "MODULE:missing", "--input-shape", "3,4"], "module 'my_models' has no callable 'missing'"),
    (["--model", "MODULE:not_a_model", "--input-shape", "3,4"], "returned a int, not a torch.nn.Module"),
    (["--model", "MODULE", "--input-shape", "3,4"], "expected PACKAGE.MODULE:CALLABLE or timm:NAME"),
    (["--model", "MODULE:tiny", "--model-args", "{width: 5}", "--input-shape", "3,4"], "--model-args: not JSON"),
    (["--model", "MODULE:tiny", "--model-args", "[5]", "--input-shape", "3,4"], "must be a JSON object"),
    (["--model", "MODULE:tiny", "--model-args", '{"depth": 2}', "--input-shape", "3,4"], "calling tiny(**"),
    (["--model", "MODULE:tiny"], "--model needs --input-shape"),
    (["--model", "MODULE:tiny", "--input-shape", "3,x"], "--input-shape: expected integers"),
    (["--model", "MODULE:tiny", "--input-shape", "3,0"], "expected positive sizes"),
    (["--model", "MODULE:tiny", "--input-shape", "3,4", "--input-dtype", "complex7"], "unknown input dtype"),
    (["--model", "MODULE:tiny", "--input-shape", "3,4", "--input-dtype", "long"], "give --input-range LOW,HIGH"),
    (["--model", "MODULE:tiny", "--input-shape", "3,4", "--input-range", "0,5"], "for an integer --input-dtype"),
    (["--model", "MODULE:tiny", "--input-shape", "3,4", "--input-dtype", "long", "--input-range", "5,5"],
     "low < high"),
    (["--model", "MODULE:tiny", "--input-shape", "7"], "fails on an input (N, 7)"),
])
def test_a_bad_model_flag_is_one_line_and_status_2(schedule, own_module, capsys, flags, message):
    flags = [f.replace("MODULE", own_module) for f in flags]
    assert main(["check", schedule, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_a_timm_name_without_timm_says_how_to_install_it(schedule, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed, also where it is
    assert main(["check", schedule, "--model", "timm:vit_tiny_patch16_224", "--input-shape", "3,224,224"]) == 2
    assert capsys.readouterr().err == ("error: --model timm:vit_tiny_patch16_224 needs timm, which is not installed "
                                       "(pip install timm)\n")


@pytest.mark.parametrize("flags, message", [
    ([*TEXT, "--dataset", "cifar10"], "--dataset: for --arch; --model takes --input-shape instead"),
    (["--arch", "lenet_mnist", "--input-shape", "1,28,28"], "--input-shape: for --model"),
])
def test_a_flag_of_the_other_kind_of_model_is_one_line(schedule, capsys, flags, message):
    assert main(["check", schedule, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_arch_and_model_are_one_or_the_other(schedule, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check", schedule, "--arch", "lenet_mnist", *TEXT])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
