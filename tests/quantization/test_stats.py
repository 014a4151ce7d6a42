"""Activation statistics: collected per layer, and a YAML file that reads back identical."""
import math

import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.quantization import collect_stats, load_stats, save_stats


def test_statistics_of_each_layers_inputs_and_output_over_batches(tmp_path):
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    batches = [torch.tensor([[-1.0, 3.0]]), torch.tensor([[1.0, 2.0]])]
    stats = collect_stats(model, batches)
    relu = stats["1"]
    assert relu["inputs"][0]["min"] == -1.0 and relu["inputs"][0]["max"] == 3.0
    assert relu["inputs"][0]["avg_min"] == 0.0 and relu["inputs"][0]["avg_max"] == 2.5  # (-1 + 1) / 2, (3 + 2) / 2
    assert relu["output"]["mean"] == pytest.approx(6.0 / 4)  # relu outputs 0, 3, 1, 2
    assert relu["output"]["std"] == pytest.approx(math.sqrt((0 + 9 + 1 + 4) / 4 - 1.5 ** 2))
    assert relu["output"]["shape"] == "(1, 2)"
    save_stats(tmp_path / "stats.yaml", stats)
    assert load_stats(tmp_path / "stats.yaml") == stats


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "maps module names"),
    ("conv1: {inputs: {}}", "conv1: needs `output`"),
    ("conv1: {output: {min: 0, max: 1, avg_min: 0, avg_max: .nan, mean: 0, std: 1}}",
     "conv1.output.avg_max: must be a finite number"),
    ("conv1: {output: {min: 2, max: 1, avg_min: 0, avg_max: 1, mean: 0, std: 1}}", "min 2 is above max 1"),
    ("conv1: [", "not valid YAML"),
])
def test_a_malformed_stats_file_names_the_module_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScheduleError, match=r"bad.yaml:\d+: ") as err:
        load_stats(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_statistic_beyond_float32s_range_is_refused_where_it_stands(tmp_path):
    path = tmp_path / "stats.yaml"
    path.write_text("conv1:\n  output: {min: 0, max: 1.0e+39, avg_min: 0, avg_max: 1, mean: 0, std: 1}\n")
    with pytest.raises(ScheduleError, match=r"stats.yaml:2: conv1.output.max: must be within float32's range"):
        load_stats(path)
