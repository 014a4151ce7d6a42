"""The final report's figures: backbone and exits counted apart, and timing that says when it is not to be
trusted."""
import torch

from distill_ee.apputils.models import create_model
from distill_ee.apputils.report import BUSY_SPREAD, _part_figures, measure_speed
from distill_ee.early_exit.exits import EarlyExits

EXIT = {"exits": {"exit1": {"attach": "pool1", "branch": ["flatten", "linear"], "threshold": 0.5}}}


def lenet_with_exit():
    torch.manual_seed(0)
    model = create_model("lenet_mnist", 10, 1)
    return model, EarlyExits.from_config(EXIT, model, num_classes=10, input_shape=(1, 28, 28))


def test_parameters_and_sparsity_of_the_backbone_and_the_exits_are_reported_apart():
    model, exits = lenet_with_exit()
    with torch.no_grad():
        model.conv2.weight[:25] = 0.0
    figures = _part_figures(model, None)
    branch = sum(p.numel() for p in exits.branch_parameters())
    assert figures["params_exits"] == branch and figures["params_backbone"] == 431080
    assert figures["sparsity_exits"] == 0.0
    weights = [model.conv1.weight, model.conv2.weight, model.fc1.weight, model.fc2.weight]
    assert abs(figures["sparsity_backbone"] - 100.0 * 25 * 20 * 25 / sum(w.numel() for w in weights)) < 1e-9


def test_timing_is_interleaved_with_the_oracle_bound_and_a_busy_flag():
    model, exits = lenet_with_exit()
    loader = [(torch.randn(32, 1, 28, 28), torch.zeros(32, dtype=torch.long)) for _ in range(2)]
    timing = measure_speed(model.eval(), exits, loader, torch.device("cpu"), batch_sizes=(16, 1), max_single=8,
                           repeats=3)
    assert set(timing) == {"16", "1"} and timing["1"]["samples"] == 8
    for row in timing.values():
        assert row["speedup"] == row["backbone_s"] / row["early_exit_s"]
        assert row["real_vs_oracle"] == row["oracle_s"] / row["early_exit_s"]
        assert row["busy"] == (row["spread"] > BUSY_SPREAD) and row["spread"] >= 0.0
