"""Per-exit statistics and MACs: decisions from logits, labels only for scoring."""
import pytest
import torch

from distill_ee.early_exit.cost import exit_macs, stage_macs
from distill_ee.early_exit.multi_exit import MultiExitModel
from distill_ee.early_exit.stats import exit_statistics, expected_macs, overall_top1
from distill_ee.summaries import total_macs

SURE_0 = [8.0, 0.0]
SURE_1 = [0.0, 8.0]
UNSURE = [0.0, 0.0]


def hand_logits():
    exit1 = torch.tensor([SURE_0, SURE_1, UNSURE, UNSURE])
    final = torch.tensor([SURE_0, SURE_0, SURE_1, SURE_0])
    return [exit1, final]


def test_rows_report_taken_share_accuracy_and_macs():
    targets = torch.tensor([0, 0, 1, 1])
    rows = exit_statistics(hand_logits(), targets, "entropy", [0.5], [100, 300], names=["early", "final"])
    # exit1 predicts [0, 1, 0, 0] (ties go to class 0), the final classifier [0, 0, 1, 0]
    assert rows[0] == {"name": "early", "threshold": 0.5, "taken_pct": 50.0, "top1_taken": 50.0,
                       "top1_if_all_exit_here": 25.0, "macs": 100}
    assert rows[1] == {"name": "final", "threshold": None, "taken_pct": 50.0, "top1_taken": 50.0,
                       "top1_if_all_exit_here": 75.0, "macs": 300}
    assert expected_macs(rows) == pytest.approx(200.0)
    assert overall_top1(rows) == pytest.approx(50.0)


def test_an_exit_nobody_takes_has_no_taken_accuracy():
    rows = exit_statistics(hand_logits(), torch.tensor([0, 0, 1, 1]), "entropy", [0.0], [1, 2])
    assert rows[0]["taken_pct"] == 0.0 and rows[0]["top1_taken"] is None
    assert [r["name"] for r in rows] == ["exit1", "final"]


def test_shuffling_the_labels_changes_no_exit_decision():
    torch.manual_seed(0)
    logits = [torch.randn(200, 10) * s for s in (1.0, 2.0, 3.0)]
    targets = torch.randint(0, 10, (200,))
    shuffled = targets[torch.randperm(200)]
    for criterion, thresholds in [("entropy", [1.5, 1.5]), ("max_prob", [0.5, 0.6]), ("margin", [0.3, 0.3]),
                                  ("patience", [1, 1])]:
        true_rows = exit_statistics(logits, targets, criterion, thresholds, [1, 2, 3])
        shuffled_rows = exit_statistics(logits, shuffled, criterion, thresholds, [1, 2, 3])
        assert [r["taken_pct"] for r in true_rows] == [r["taken_pct"] for r in shuffled_rows]
        assert [r["top1_if_all_exit_here"] for r in true_rows] != [r["top1_if_all_exit_here"] for r in shuffled_rows]


def test_exit_macs_are_the_stages_run_plus_the_branches_passed(ee, lenet):
    exits = ee.attach(lenet, ee.exits_config(["conv1", "conv2"], branch=["flatten", "linear"])).exit_set
    multi = MultiExitModel.from_model(lenet, exits, "entropy", [0.5, 0.5])
    conv1 = 6 * 24 * 24 * 1 * 25
    conv2 = 16 * 8 * 8 * 6 * 25
    fcs = 256 * 32 + 32 * 24 + 24 * 10
    branch1, branch2 = 6 * 24 * 24 * 10, 16 * 8 * 8 * 10
    stages, branches = stage_macs(multi, lenet)
    assert stages == [conv1, conv2, fcs] and branches == [branch1, branch2]
    assert exit_macs(multi, lenet) == [conv1 + branch1, conv1 + branch1 + conv2 + branch2,
                                       conv1 + conv2 + fcs + branch1 + branch2]
    dense, _ = total_macs(lenet, torch.randn(1, 1, 28, 28))
    assert dense == sum(stages)
    multi.set_thresholds([None, 0.5])  # a skipped branch costs nothing on the way
    assert exit_macs(multi, lenet)[2] == conv1 + conv2 + fcs + branch2
