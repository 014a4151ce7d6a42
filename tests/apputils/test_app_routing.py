"""compress_classifier.py with routing: the report's per-block figures, metrics, checkpoints, refused flags."""
import json

import pytest

from distill_ee.apputils.app import main

pytestmark = pytest.mark.slow

SCHEDULE = """
version: 1
routing:
  skip:
    class: SkipGates
    blocks: ['layer*.*']
policies:
  - routing:
      instance_name: skip
      args: {phase: supervised, alpha: 2.0}
    starting_epoch: 1
    ending_epoch: 2
"""
BASE = ["--arch", "resnet20_cifar", "--dataset", "mnist5k", "-b", "128", "--lr", "0.05", "--seed", "0",
        "--deterministic", "--no-timing", "-p", "1000"]


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    schedule = out / "skip.yaml"
    schedule.write_text(SCHEDULE)
    assert main([*BASE, "--compress", str(schedule), "--epochs", "2", "-o", str(out), "-n", "skip"]) == 0
    return next(out.glob("skip___*"))


def test_the_summary_reports_each_blocks_execution_rate_and_the_expected_macs(routed_run):
    summary = json.loads((routed_run / "summary.json").read_text())
    routing = summary["routing"]
    assert routing["class"] == "SkipGates" and routing["name"] == "skip"
    assert [b["name"] for b in routing["blocks"]] == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2",
                                                      "layer3.1", "layer3.2"]
    assert all(0.0 <= b["executed_pct"] <= 100.0 for b in routing["blocks"])
    assert routing["top1"] == summary["top1"]  # the test figure is the routed network's
    assert summary["macs_expected"] == routing["macs_expected"] <= summary["macs_dense"]
    executed = sum(b["macs"] * b["executed_pct"] / 100 for b in routing["blocks"])
    outside = routing["macs_backbone"] - sum(b["macs"] for b in routing["blocks"])
    assert routing["macs_expected"] == pytest.approx(outside + executed + routing["macs_decisions"])
    assert summary["params_routing"] > 0


def test_metrics_csv_has_the_share_of_blocks_run_in_routing_epochs(routed_run):
    lines = (routed_run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert "train_skip_executed" in header and "train_skip_cost" in header
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert rows[0]["train_skip_executed"] == "" and float(rows[1]["train_skip_executed"]) <= 1.0


def test_evaluating_the_checkpoint_rebuilds_the_routing_without_the_schedule(routed_run, tmp_path):
    args = [*BASE, "--resume-from", str(routed_run / "checkpoint.pth.tar"), "--evaluate", "-o", str(tmp_path),
            "-n", "ev"]
    assert main(args) == 0
    summary = json.loads(next(tmp_path.glob("ev___*/summary.json")).read_text())
    original = json.loads((routed_run / "summary.json").read_text())
    assert summary["routing"] == original["routing"]
    assert summary["top1"] == original["top1"]


def test_exporting_routed_blocks_is_refused_before_training(routed_run, tmp_path, capsys):
    args = [*BASE, "--resume-from", str(routed_run / "checkpoint.pth.tar"), "--evaluate", "--ee-export",
            "-o", str(tmp_path)]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--ee-export does not export routed blocks" in errors[0]
    assert not list(tmp_path.iterdir())


RL_SCHEDULE = """
version: 1
routing:
  skip:
    class: SkipGates
    blocks: ['layer*.*']
    gate: rnn
policies:
  - routing:
      instance_name: skip
      args: {phase: supervised, alpha: 1.0}
    starting_epoch: 0
    ending_epoch: 1
  - routing:
      instance_name: skip
      args: {phase: reinforce, alpha: 1.0}
    starting_epoch: 1
    ending_epoch: 3
"""


def test_resuming_the_app_in_the_middle_of_reinforcement_learning_equals_an_uninterrupted_run(tmp_path):
    import torch
    from distill_ee.checkpoint import read_checkpoint
    schedule = tmp_path / "rl.yaml"
    schedule.write_text(RL_SCHEDULE)
    common = [*BASE, "--compress", str(schedule)]
    assert main([*common, "--epochs", "3", "-o", str(tmp_path / "whole"), "-n", "rl"]) == 0
    assert main([*common, "--epochs", "2", "-o", str(tmp_path / "first"), "-n", "rl"]) == 0
    first = next((tmp_path / "first").glob("rl___*"))
    assert main([*common, "--epochs", "3", "--resume-from", str(first / "checkpoint.pth.tar"),
                 "-o", str(tmp_path / "rest"), "-n", "rl"]) == 0
    whole, rest = next((tmp_path / "whole").glob("rl___*")), next((tmp_path / "rest").glob("rl___*"))
    a, b = (read_checkpoint(str(run / "checkpoint.pth.tar")) for run in (whole, rest))
    assert a["epoch"] == b["epoch"] == 2
    for name, value in a["state_dict"].items():
        other = b["state_dict"][name]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name
    summaries = [json.loads((run / "summary.json").read_text()) for run in (whole, rest)]
    assert summaries[0]["routing"] == summaries[1]["routing"] and summaries[0]["top1"] == summaries[1]["top1"]
