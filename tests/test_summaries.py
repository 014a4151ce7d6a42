"""Sparsity, compute (MACs) and module tables, checked against hand-computed numbers."""
import math

import pytest
import torch
import torch.fx
from torch import nn

from distill_ee.apputils.models import create_model
from distill_ee.pruning.masks import create_masks
from distill_ee.summaries import (
    compute_table,
    model_table,
    module_macs,
    params_nnz,
    sparsity_table,
    total_macs,
    total_sparsity,
)

LENET_MACS = {
    "conv1": 20 * 1 * 5 * 5 * 24 * 24,  # 288,000
    "conv2": 50 * 20 * 5 * 5 * 8 * 8,  # 1,600,000
    "fc1": 800 * 500,
    "fc2": 500 * 10,
}
LENET_TOTAL = 2_293_000


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return create_model("lenet_mnist", 10, 1)


def test_lenet_macs_match_the_hand_computation_per_sample(lenet):
    for batch in (1, 4):
        layers = module_macs(lenet, torch.randn(batch, 1, 28, 28))
        assert {l.name: l.dense_macs for l in layers} == LENET_MACS
    assert sum(LENET_MACS.values()) == LENET_TOTAL
    assert total_macs(lenet, torch.randn(1, 1, 28, 28)) == (LENET_TOTAL, LENET_TOTAL)


def test_layer_records_carry_shapes_and_weight_counts(lenet):
    conv2 = {l.name: l for l in module_macs(lenet, torch.randn(1, 1, 28, 28))}["conv2"]
    assert (conv2.type, conv2.input_shape, conv2.output_shape) == ("Conv2d", (1, 20, 12, 12), (1, 50, 8, 8))
    assert (conv2.weight_shape, conv2.params, conv2.nnz) == ((50, 20, 5, 5), 25_050, 25_000)


def test_effective_macs_halve_when_half_the_weights_are_zero(lenet):
    with torch.no_grad():
        lenet.conv2.weight[:25] = 0
    dense, effective = total_macs(lenet, torch.randn(1, 1, 28, 28))
    assert dense == LENET_TOTAL
    assert effective == LENET_TOTAL - LENET_MACS["conv2"] // 2


def test_masks_count_as_applied_without_touching_the_weights(lenet):
    masks = create_masks(lenet)
    masks["fc1.weight"].mask = torch.zeros(500, 800)
    masks["fc1.weight"].mask[:, :400] = 1
    before = lenet.fc1.weight.clone()
    layers = {l.name: l for l in module_macs(lenet, torch.randn(1, 1, 28, 28), masks)}
    assert layers["fc1"].effective_macs == 200_000 and layers["fc1"].nnz == 200_000
    assert torch.equal(lenet.fc1.weight, before)


def test_grouped_and_1d_convolutions():
    grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert total_macs(grouped, torch.randn(1, 4, 5, 5))[0] == 8 * 5 * 5 * (4 // 2) * 9
    conv1d = nn.Conv1d(2, 3, 3)
    assert total_macs(conv1d, torch.randn(2, 2, 10))[0] == 3 * 8 * 2 * 3


def test_graph_modules_keep_qualified_names():
    model = create_model("resnet20_cifar", 10, 3)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 32, 32)
    eager = [(l.name, l.dense_macs) for l in module_macs(model, x)]
    assert [(l.name, l.dense_macs) for l in module_macs(traced, x)] == eager
    assert ("layer1.0.conv1", 16 * 16 * 9 * 32 * 32) in eager


class _WithSpares(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 100)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.used(self.bn(x)) + self.used(self.bn(x))


def test_unused_layers_are_skipped_repeated_calls_summed_and_state_kept():
    model = _WithSpares().train()
    stats = model.bn.running_mean.clone()
    layers = module_macs(model, torch.randn(3, 4) + 5)
    assert [(l.name, l.dense_macs) for l in layers] == [("used", 2 * 4 * 2)]
    assert model.training and torch.equal(model.bn.running_mean, stats)


def test_compute_table_ends_with_the_totals(lenet):
    layers, text = compute_table(lenet, torch.randn(1, 1, 28, 28))
    assert [l.name for l in layers] == ["conv1", "conv2", "fc1", "fc2"]
    total_line = [line for line in text.splitlines() if "Total" in line][0]
    assert total_line.count("2,293,000") == 2


def _hand_built():
    """Linear: output row 0 and input column 1 zero; conv: filter 0 and kernel (1, 1) zero."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Conv2d(2, 3, 2))
    with torch.no_grad():
        fc, conv = model[0], model[1]
        fc.weight.fill_(1)
        fc.weight[0] = 0
        fc.weight[:, 1] = 0
        conv.weight.fill_(1)
        conv.weight[0] = 0
        conv.weight[1, 1] = 0
    return model


def test_sparsity_table_structures_on_a_hand_built_model():
    rows, text = sparsity_table(_hand_built())
    fc, conv, total = rows
    assert fc["Name"] == "0.weight" and fc["Shape"] == "(3, 4)"
    assert (fc["NNZ (dense)"], fc["NNZ (sparse)"]) == (12, 6)
    assert fc["Cols (%)"] == pytest.approx(100 / 3) and fc["Rows (%)"] == pytest.approx(25)
    assert fc["2D (%)"] == pytest.approx(100 / 3) and (fc["Ch (%)"], fc["3D (%)"]) == (0, 0)
    assert fc["Fine (%)"] == pytest.approx(50)
    assert fc["Mean"] == pytest.approx(0.5) and fc["Abs-Mean"] == pytest.approx(0.5)
    assert fc["Std"] == pytest.approx(math.sqrt(0.25 * 12 / 11))

    assert (conv["NNZ (dense)"], conv["NNZ (sparse)"]) == (24, 12)
    assert conv["3D (%)"] == pytest.approx(100 / 3)  # filter 0
    assert conv["2D (%)"] == pytest.approx(50)  # kernels (0,0), (0,1), (1,1) of 6
    assert conv["Ch (%)"] == 0  # input channel 1 is still used by filter 2
    assert (conv["Cols (%)"], conv["Rows (%)"]) == (0, 0)

    assert total["Name"] == "Total sparsity:"
    assert (total["NNZ (dense)"], total["NNZ (sparse)"]) == (36, 18)
    assert total["Fine (%)"] == pytest.approx(50)
    assert "1.weight" in text and "bias" not in text


def test_sparsity_counts_masks_as_applied():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    masks = create_masks(model)
    masks["0.weight"].mask = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert total_sparsity(model, masks) == pytest.approx(200 / 3)
    assert total_sparsity(model) == 0
    assert sparsity_table(model, masks)[0][0]["Cols (%)"] == pytest.approx(200 / 3)


def test_params_nnz_counts_weights_and_biases_after_masks():
    model = _hand_built()
    assert params_nnz(model) == (12 + 3 + 24 + 3, 6 + 12 + 3 + 3)
    masks = create_masks(model)
    masks["1.bias"].mask = torch.zeros(3)
    assert params_nnz(model, masks) == (42, 21)


def test_model_table_lists_modules_with_their_own_parameters(lenet):
    text = model_table(lenet)
    conv2 = [line for line in text.splitlines() if " conv2 " in line][0]
    assert "Conv2d" in conv2 and "25,050" in conv2
    assert "431,080" in [line for line in text.splitlines() if "Total" in line][0]
