"""The calibration's trade-off files: the front as CSV (chosen and final-only rows marked) and two pictures."""
import csv

import pytest

from distill_ee.apputils.tradeoff_files import write_tradeoff
from distill_ee.early_exit.tradeoff import ExitCosts, measure_point, pareto_front
from distill_ee.errors import ConfigError
from support import costs_for, synthetic


def test_write_tradeoff_writes_the_csv_and_two_pictures(tmp_path):
    logits, targets = synthetic()
    costs = costs_for(2)
    points = pareto_front(logits, targets, "entropy", costs.macs_per_exit, costs.full_macs, 30,
                          branch_macs=costs.branch_macs)
    chosen = points[len(points) // 2]
    final = measure_point(logits, targets, "entropy", [None, None], costs)
    paths = write_tradeoff(points, chosen, str(tmp_path / "out"), final=final, exit_names=["a", "b", "end"],
                           guides={"top1": final.top1 - 1.0})
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["tradeoff.csv", "tradeoff.png", "exit_fractions.png"]
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["threshold_a", "threshold_b", "top1", "expected_macs", "macs_fraction",
                             "taken_pct_a", "taken_pct_b", "taken_pct_end", "role"]
    assert [r["role"] for r in rows].count("chosen") == 1
    final_rows = [r for r in rows if r["role"] == "final only"]
    assert len(final_rows) == 1 and final_rows[0]["threshold_a"] == "off"
    assert float(final_rows[0]["macs_fraction"]) == pytest.approx(1.0)
    chosen_row = next(r for r in rows if r["role"] == "chosen")
    assert float(chosen_row["threshold_a"]) == chosen.thresholds[0]
    final_on_front = any(p.thresholds == [None, None] for p in points)
    assert len(rows) == len(points) + (0 if final_on_front else 1)  # the chosen point is on the front
    for png in paths[1:]:
        with open(png, "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_write_tradeoff_needs_a_name_per_output(tmp_path):
    logits, targets = synthetic(strengths=(1.0, 4.0))
    point = measure_point(logits, targets, "entropy", [None], ExitCosts([50.0, 100.0], 100.0))
    with pytest.raises(ConfigError, match="output names"):
        write_tradeoff([point], point, str(tmp_path), exit_names=["only_one"])
