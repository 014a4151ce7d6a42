"""The zoo sweep's six checks, on one small torchvision model: every cell passes and the table says so."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("model_zoo", ROOT / "benchmarks" / "model_zoo.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["model_zoo"] = bench
spec.loader.exec_module(bench)


def test_the_schedule_attaches_two_exits_a_pruner_and_a_thinner_at_the_zoo_entrys_names():
    zoo = next(z for z in bench.ZOO if z.name == "squeezenet1_1")
    text = bench.schedule_text(zoo)
    assert "attach: features.4" in text and "attach: features.7" in text
    assert "weights: [features.6.squeeze.weight]" in text and text.count("epochs: [0]") == 2


@pytest.mark.slow
def test_squeezenet_passes_all_six_checks(capsys):
    assert bench.main(["--only", "squeezenet1_1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| squeezenet1_1"))
    assert row.count("✅") == len(bench.CHECKS) and "16 filters" in row
    assert "1 of 1 models pass all six checks" in out


def test_a_threshold_sits_in_the_widest_gap_of_the_middle_scores():
    import torch
    scores = torch.tensor([0.1, 0.2, 0.21, 0.6, 0.61, 0.9, 1.0, 1.1])
    assert bench._between(scores) == pytest.approx(0.405)
