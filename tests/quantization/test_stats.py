"""Activation statistics: collected per layer, and a YAML file that reads back identical."""
import math

import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.quantization import collect_stats, load_stats, save_stats


def distiller_collector(batches):
    """Distiller's QuantCalibrationStatsCollector for one tensor, written out: pass 1 keeps min, max, the running
    average of per-sample min and max (weighed by the values seen so far) and the mean; pass 2 the standard
    deviation and b around that mean."""
    record = {"min": math.inf, "max": -math.inf, "avg_min": 0.0, "avg_max": 0.0, "mean": 0.0, "std": 0.0, "b": 0.0}

    def running(values, previous, so_far):
        return (so_far * previous + values.sum().item()) / (so_far + values.numel())

    seen = 0
    for t in batches:
        act = t.view(t.size(0), -1)
        dim = 0 if act.numel() == act.shape[0] else 1
        low, high = act.min(dim=dim)[0], act.max(dim=dim)[0]
        record["min"], record["max"] = min(record["min"], low.min().item()), max(record["max"], high.max().item())
        record["avg_min"] = running(low, record["avg_min"], seen)
        record["avg_max"] = running(high, record["avg_max"], seen)
        record["mean"] = running(act, record["mean"], seen)
        seen += act.numel()
    seen = 0
    for t in batches:
        act = t.view(t.size(0), -1)
        record["b"] = running((act - record["mean"]).abs(), record["b"], seen)
        record["std"] = math.sqrt(running((act - record["mean"]) ** 2, record["std"] ** 2, seen))
        seen += act.numel()
    return record


def test_statistics_of_each_layers_inputs_and_output_over_batches(tmp_path):
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    batches = [torch.tensor([[-1.0, 3.0]]), torch.tensor([[1.0, 2.0]])]
    stats = collect_stats(model, batches)
    relu = stats["1"]
    assert relu["inputs"][0]["min"] == -1.0 and relu["inputs"][0]["max"] == 3.0
    # the second batch's per-sample min (1) weighs 1 against the 2 values seen before: (2 * -1 + 1) / 3
    assert relu["inputs"][0]["avg_min"] == pytest.approx(-1 / 3) and relu["inputs"][0]["avg_max"] == pytest.approx(8 / 3)
    assert relu["output"]["mean"] == pytest.approx(6.0 / 4)  # relu outputs 0, 3, 1, 2
    assert relu["output"]["std"] == pytest.approx(math.sqrt((0 + 9 + 1 + 4) / 4 - 1.5 ** 2))  # around the mean
    assert relu["output"]["b"] == pytest.approx((1.5 + 1.5 + 0.5 + 0.5) / 4)
    assert relu["output"]["shape"] == "(1, 2)"
    save_stats(tmp_path / "stats.yaml", stats)
    assert load_stats(tmp_path / "stats.yaml") == stats


@pytest.mark.parametrize("sizes", [(64,), (32, 32), (8, 56), (1, 1, 62)])
def test_the_statistics_are_distillers_collector_to_its_arithmetic(sizes):
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3)
    images = torch.randn(sum(sizes), 3, 8, 8)
    batches = list(torch.split(images, list(sizes)))
    stats = collect_stats(nn.Sequential(layer), batches)["0"]
    with torch.no_grad():
        outputs = [layer(x) for x in batches]
    for got, tensors in ((stats["inputs"][0], batches), (stats["output"], outputs)):
        expected = distiller_collector(tensors)
        assert {k: got[k] for k in expected} == expected  # the same operations: equal to the bit


def test_avg_is_per_sample_so_one_batch_gives_the_average_of_its_samples_whatever_its_size():
    images = torch.tensor([[0.0, 4.0], [-2.0, 1.0], [1.0, 3.0]])
    stats = collect_stats(nn.Sequential(nn.Identity()), [images])["0"]["output"]
    assert stats["avg_min"] == pytest.approx(-1 / 3) and stats["avg_max"] == pytest.approx(8 / 3)


def test_one_value_per_sample_averages_the_batchs_min_and_max():
    stats = collect_stats(nn.Sequential(nn.Identity()), [torch.tensor([[1.0], [5.0]])])["0"]["output"]
    assert stats["avg_min"] == 1.0 and stats["avg_max"] == 5.0


def test_a_stats_file_without_b_still_loads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("conv1:\n  output: {min: 0, max: 1, avg_min: 0, avg_max: 1, mean: 0.5, std: 0.2}\n")
    assert "b" not in load_stats(path)["conv1"]["output"]


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "maps module names"),
    ("conv1: {inputs: {}}", "conv1: needs `output`"),
    ("conv1: {output: {min: 0, max: 1, avg_min: 0, avg_max: .nan, mean: 0, std: 1}}",
     "conv1.output.avg_max: must be a finite number"),
    ("conv1: {output: {min: 2, max: 1, avg_min: 0, avg_max: 1, mean: 0, std: 1}}", "min 2 is above max 1"),
    ("conv1: [", "not valid YAML"),
    ("conv1: {output: {min: 0, max: 1, avg_min: 0, avg_max: 1, mean: 0, std: 1, b: -1}}",
     "conv1.output.b: must be a finite number of at least 0"),
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
