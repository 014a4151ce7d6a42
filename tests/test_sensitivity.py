"""Sensitivity analysis: each weight pruned alone to each level, evaluated, written as CSV and a plot."""
import csv

import pytest
import torch
from torch import nn

from distill_ee.apputils.sensitivity_files import (run_sensitivity, sensitivities_to_csv, sensitivity_levels)
from distill_ee.errors import ConfigError
from distill_ee.sensitivity import perform_sensitivity_analysis


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 10, 3)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


def density_probe(seen):
    """A test function reporting, as 'top1', 100 x the density of conv.weight, and recording what it saw."""

    def test_func(model):
        w = model.conv.weight.detach()
        zero_filters = int((w.reshape(10, -1).abs().sum(dim=1) == 0).sum())
        zero_channels = int((w.transpose(0, 1).reshape(2, -1).abs().sum(dim=1) == 0).sum())
        fc_density = float((model.fc.weight != 0).float().mean())
        seen.append((zero_filters, zero_channels, fc_density))
        return 100.0 * float((w != 0).float().mean()), 100.0, 1.0 - fc_density

    return test_func


def test_element_sensitivity_prunes_one_weight_at_a_time_to_each_level():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    sens = perform_sensitivity_analysis(model, ["conv.weight", "fc.weight"], [0.0, 0.25, 0.5],
                                        density_probe(seen), "element")
    assert list(sens) == ["conv.weight", "fc.weight"]
    assert [round(v[0], 2) for v in sens["conv.weight"].values()] == [100.0, 75.0, 50.0]
    assert [v[2] for v in sens["conv.weight"].values()] == [0.0, 0.0, 0.0]  # fc untouched meanwhile
    assert [round(v[2], 3) for v in sens["fc.weight"].values()] == [0.0, 0.25, 0.5]
    assert [v[0] for v in sens["fc.weight"].values()] == [100.0] * 3  # conv restored before fc is analysed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is unchanged


def test_filter_and_channel_groups_prune_whole_structures():
    seen = []
    perform_sensitivity_analysis(tiny(), ["conv.weight"], [0.3, 0.5], density_probe(seen), "filter")
    assert [s[0] for s in seen] == [3, 5]
    seen.clear()
    perform_sensitivity_analysis(tiny(), ["conv.weight"], [0.5], density_probe(seen), "channel")
    assert seen[0][1] == 1


def test_by_default_every_linear_and_conv_weight_is_analysed_and_biases_skipped():
    sens = perform_sensitivity_analysis(tiny(), None, [0.1], density_probe([]), "element")
    assert list(sens) == ["conv.weight", "fc.weight"]
    assert list(perform_sensitivity_analysis(tiny(), ["conv.bias"], [0.1], density_probe([]), "element")) == []


def test_run_writes_the_csv_and_the_plot(tmp_path):
    csv_path, png_path = run_sensitivity(tiny(), ["module.conv.weight", "fc.weight"], [0.0, 0.5], "element",
                                         density_probe([]), tmp_path / "sense")
    with csv_path.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["parameter", "sparsity", "top1", "top5", "loss"]
    assert [r[:2] for r in rows[1:]] == [["conv.weight", "0.0"], ["conv.weight", "0.5"],
                                         ["fc.weight", "0.0"], ["fc.weight", "0.5"]]
    assert float(rows[2][2]) == pytest.approx(50.0) and float(rows[4][4]) == pytest.approx(0.5)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 5000


def test_csv_of_given_results_is_exact(tmp_path):
    path = sensitivities_to_csv({"w": {0.1: (90.0, 99.0, 0.5)}}, tmp_path / "s.csv")
    assert path.read_text().splitlines() == ["parameter,sparsity,top1,top5,loss", "w,0.1,90.0,99.0,0.5"]


def test_levels_follow_the_sense_range_flag():
    assert sensitivity_levels(0.0, 0.3, 0.1) == [0.0, 0.1, 0.2]
    assert sensitivity_levels(0.4, 0.95, 0.25) == [0.4, 0.65, 0.9]
    with pytest.raises(ConfigError, match="sense-range"):
        sensitivity_levels(0.5, 0.2, 0.1)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="did you mean 'filter'"):
        perform_sensitivity_analysis(tiny(), None, [0.1], density_probe([]), "filters")
    with pytest.raises(ConfigError, match="did you mean 'conv.weight'"):
        perform_sensitivity_analysis(tiny(), ["conv.weigth"], [0.1], density_probe([]), "element")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        perform_sensitivity_analysis(tiny(), None, [1.5], density_probe([]), "element")
