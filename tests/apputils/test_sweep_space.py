"""The sweep file of ``distill-ee sweep``: how it is read, how a trial's values go into the schedule, and how a
bad search space is refused (one located line, exit status 2, before any trial runs)."""
import sys
from pathlib import Path

import pytest
import yaml

from distill_ee.apputils.cli import main
from distill_ee.apputils.sweep_space import flag_args, read_sweep, schedule_text, substitute, yaml_path

SCHEDULE = Path(__file__).resolve().parents[2] / "schedules" / "lenet_mnist.earlyexit.yaml"
SPACE = """\
  early_exits.branchy.exits.exit1.loss_weight: [0.2, 0.5, 1.0]
  early_exits.branchy.final_loss_weight: {low: 0.3, high: 1.0}
  --lr: {low: 0.01, high: 0.1, log: true}
"""


def sweep_file(tmp_path: Path, space: str = SPACE, objectives: str = "  top1: maximize\n", extra: str = "",
               flags: str = "--epochs 1 --etrs 0.02 --no-timing") -> Path:
    """A sweep file on the B-LeNet schedule with the given space (its entries indented two spaces)."""
    path = tmp_path / "s.sweep.yaml"
    path.write_text(f"version: 1\nbase:\n  arch: lenet_mnist\n  schedule: {SCHEDULE}\n  flags: {flags}\n"
                    f"space:\n{space}objectives:\n{objectives}trials: 3\nseed: 0\n{extra}")
    return path


def refused(tmp_path: Path, capsys, path: Path) -> str:
    """Run the sweep on ``path``; assert it stops with status 2 on one line, no trial run; the line."""
    out = tmp_path / "out"
    assert main(["sweep", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not (out / "trials").exists() and not (out / "study.db").exists()
    return err


def test_the_file_gives_the_base_command_the_space_and_the_objectives(tmp_path):
    sweep = read_sweep(sweep_file(tmp_path, objectives="  top1: maximise\n  macs_expected: min\n"))
    assert sweep.arch == "lenet_mnist" and sweep.flags == ["--epochs", "1", "--etrs", "0.02", "--no-timing"]
    lw, final, lr = sweep.params
    assert lw.choices == [0.2, 0.5, 1.0] and lw.line == 7
    assert (final.low, final.high, final.integer) == (0.3, 1.0, False)
    assert lr.is_flag and lr.log
    assert sweep.directions == ["maximize", "minimize"] and sweep.trials == 3 and sweep.pruner is None


def test_an_int_range_with_a_step_is_an_int(tmp_path):
    sweep = read_sweep(sweep_file(tmp_path, space="  --epochs: {low: 1, high: 3, step: 1}\n"))
    assert sweep.params[0].integer and sweep.params[0].extremes() == [1, 3]


def test_values_are_substituted_at_their_yaml_paths_and_flags_appended(tmp_path):
    sweep = read_sweep(sweep_file(tmp_path))
    values = {"early_exits.branchy.exits.exit1.loss_weight": 0.2, "early_exits.branchy.final_loss_weight": 0.4,
              "--lr": 0.05}
    data = yaml.safe_load(schedule_text(sweep, values))
    assert data["early_exits"]["branchy"]["exits"]["exit1"]["loss_weight"] == 0.2
    assert data["early_exits"]["branchy"]["final_loss_weight"] == 0.4
    assert data["early_exits"]["branchy"]["exits"]["exit2"]["loss_weight"] == 0.8  # the rest untouched
    assert flag_args(sweep.params, values) == ["--lr", "0.05"]
    assert yaml_path("policies.0.starting_epoch") == ("policies", 0, "starting_epoch")
    assert substitute({"a": [{"b": 1}]}, {"x": 2}, []) == {"a": [{"b": 1}]}


def test_an_unknown_yaml_path_names_the_keys_there(tmp_path, capsys):
    err = refused(tmp_path, capsys, sweep_file(tmp_path, "  early_exits.branchy.exits.exit9.loss_weight: [0.1]\n"))
    assert ":7: space['early_exits.branchy.exits.exit9.loss_weight']: unknown YAML path" in err
    assert "valid: exit1, exit2" in err


def test_a_value_the_schedule_refuses_is_found_before_training(tmp_path, capsys):
    err = refused(tmp_path, capsys, sweep_file(tmp_path, "  early_exits.branchy.criterion: [entropy, bogus]\n"))
    assert ":7: space['early_exits.branchy.criterion']: the value 'bogus' makes lenet_mnist.earlyexit.yaml " \
           "invalid" in err and "entropy" in err


def test_an_unknown_flag_suggests_the_near_one(tmp_path, capsys):
    err = refused(tmp_path, capsys, sweep_file(tmp_path, "  --lrr: {low: 0.01, high: 0.1}\n"))
    assert ":7: space.--lrr: unknown flag --lrr (the sample app's flags: distill-ee --help); did you mean '--lr'" in err


def test_a_flag_value_the_app_refuses_is_named(tmp_path, capsys):
    err = refused(tmp_path, capsys, sweep_file(tmp_path, "  --momentum: {low: 0.5, high: 1.5}\n"))
    assert ":7: space.--momentum: the value 1.5 is refused: --momentum must be" in err
    err = refused(tmp_path, capsys, sweep_file(tmp_path, "  --epochs: [1, many]\n"))
    assert "the value 'many' is refused: argument --epochs: invalid int value" in err


def test_a_flag_the_sweep_sets_cannot_be_searched(tmp_path, capsys):
    err = refused(tmp_path, capsys, sweep_file(tmp_path, "  --compress: [a.yaml]\n"))
    assert "--compress is set by the sweep" in err


@pytest.mark.parametrize("entry, says", [
    ("  --lr: {low: 0.1}\n", "a range needs high"),
    ("  --lr: {low: 0.1, high: 0.01}\n", "low must be below high"),
    ("  --lr: {low: 0, high: 0.1, log: true}\n", "a log range needs low > 0"),
    ("  --lr: {low: 0.01, high: 0.1, stride: 2}\n", "unknown key 'stride'"),
    ("  --lr: 0.1\n", "cannot read 0.1 as a space entry"),
    ("  --lr: []\n", "a categorical is a non-empty list"),
])
def test_a_malformed_entry_says_what_is_valid(tmp_path, capsys, entry, says):
    err = refused(tmp_path, capsys, sweep_file(tmp_path, entry))
    assert ":7: space.--lr" in err and says in err


def test_pruning_applies_to_one_objective_only(tmp_path, capsys):
    err = refused(tmp_path, capsys, sweep_file(tmp_path, objectives="  top1: maximize\n  macs_expected: minimize\n",
                                               extra="pruner: median\n"))
    assert ":15: pruner: pruning applies only to single-objective studies" in err


def test_without_optuna_the_command_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["sweep", str(sweep_file(tmp_path))]) == 2
    assert capsys.readouterr().err == ("error: distill-ee sweep needs optuna, which is not installed "
                                       "(pip install distill-ee[sweep])\n")
