"""compress_classifier.py with learned exit decisions: a learned policy trained on the validation split after
training, its curve next to the entropy rule's in tradeoff.csv, test figures beside, and the policy in the
checkpoint; flags that do not apply to learned decisions are refused up front."""
import csv
import json
from pathlib import Path

import pytest
import torch

import distill_ee
from distill_ee.apputils.app import main
from distill_ee.apputils.models import create_model

EXITS = """
    exits:
      exit1:
        attach: pool1
        branch: [{type: conv, out_channels: 10, kernel_size: 3, padding: 1}, relu, {type: maxpool, kernel_size: 2},
                 flatten, linear]
policies:
  - early_exit: {instance_name: ee}
    starting_epoch: 0
    ending_epoch: 2
"""
LEARNED = "version: 1\nearly_exits:\n  ee:\n    class: EarlyExit\n    criterion: learned\n" \
          "    learned_policy: {tradeoff: 1.0}\n" + EXITS
GATED = "version: 1\nearly_exits:\n  ee:\n    class: EarlyExit\n    criterion: gate\n" \
        "    gate: {cost_weight: 0.02}\n" + EXITS


def run(tmp: Path, schedule: str, *extra: str) -> int:
    (tmp / "s.yaml").write_text(schedule)
    return main(["--arch", "lenet_mnist", "--compress", str(tmp / "s.yaml"), "--epochs", "2", "-b", "128",
                 "--lr", "0.02", "--seed", "0", "--deterministic", "--no-timing", "-o", str(tmp / "runs"), "-n",
                 "exp", "-p", "1000", *extra])


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("learned")
    assert run(tmp, LEARNED) == 0
    (path,) = (tmp / "runs").iterdir()
    return path


@pytest.mark.slow
def test_the_policy_is_trained_after_training_and_reported_on_validation_and_test(learned_run):
    summary = json.loads((learned_run / "summary.json").read_text())
    policy = summary["learned_policy"]
    assert policy["tradeoff"] == 1.0 and policy["rule"] == "entropy"
    assert {p["tradeoff"] for p in policy["curve"]} == {0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0}
    # the test figures of the chosen policy are what the model, restored and exiting for real, does on test
    taken = [e["taken_pct"] for e in summary["exits"]]
    assert taken == pytest.approx(list(policy["test"]["taken_pct"].values()), abs=1e-6)


@pytest.mark.slow
def test_tradeoff_csv_holds_both_curves_with_test_figures_beside(learned_run):
    with open(learned_run / "tradeoff.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"rule", "tradeoff", "top1", "macs_fraction", "test_top1", "test_macs_fraction", "role"} <= set(rows[0])
    rules = {r["rule"] for r in rows}
    assert rules == {"entropy", "learned", "final only"}
    learned = [r for r in rows if r["rule"] == "learned"]
    assert len(learned) == 8 and [r["role"] for r in learned].count("chosen") == 1
    assert all(r["test_top1"] for r in rows if r["rule"] != "final only")


@pytest.mark.slow
def test_the_checkpoint_carries_the_fitted_policy(learned_run):
    model = create_model("lenet_mnist", 10, 1)
    distill_ee.load_checkpoint(model, learned_run / "checkpoint.pth.tar")
    summary = json.loads((learned_run / "summary.json").read_text())
    assert model.early_exits.criteria == ["learned"]
    state = torch.load(learned_run / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    assert torch.equal(model.early_exits.deciders.exit1.head[1].weight,
                       state["early_exits.deciders.exit1.head.1.weight"])
    assert summary["exits"][0]["threshold"] == 0.5


@pytest.mark.parametrize("schedule,flags,message", [
    (LEARNED, ["--ee-calibrate", "drop=1"], "--ee-calibrate does not apply to a learned exit policy"),
    (GATED, ["--ee-calibrate", "drop=1", "--ee-temperature"], "--ee-temperature would change the logits the gate"),
])
def test_flags_learned_decisions_do_not_take_are_refused_up_front(tmp_path, capsys, schedule, flags, message):
    assert run(tmp_path, schedule, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_gated_exits_train_from_the_cli_and_report_their_cost(tmp_path):
    assert run(tmp_path, GATED) == 0
    (path,) = (tmp_path / "runs").iterdir()
    with open(path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(0.0 < float(r["train_expected_cost"]) < 1.2 for r in rows)
    assert float(rows[-1]["train_soft_conditional_loss"]) > 0
