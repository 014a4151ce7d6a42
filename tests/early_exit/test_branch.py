"""Branch building: layer types from BRANCH_LAYERS, input sizes inferred, shape errors located."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit.branch import build_branch, parse_layer
from distill_ee.errors import ScheduleError
from distill_ee.registry import BRANCH_LAYERS


def layers(*raw):
    return [parse_layer(r) for r in raw]


def build(raw, shape=(2, 6, 12, 12), num_classes=10):
    return build_branch(layers(*raw), torch.randn(shape), num_classes, exit_name="exit1", path="exits.exit1.branch")


def test_every_documented_layer_type_is_registered():
    expected = {"conv", "bn", "relu", "maxpool", "avgpool", "adaptive_avgpool", "flatten", "linear", "dropout"}
    assert expected <= set(BRANCH_LAYERS.names())


def test_input_sizes_are_inferred_from_the_attach_output():
    branch = build([{"type": "conv", "out_channels": 10, "kernel_size": 3, "padding": 1}, "bn", "relu",
                    {"type": "maxpool", "kernel_size": 2}, "flatten", {"type": "linear", "out_features": 32},
                    "dropout", {"type": "linear"}])
    conv, bn, lin1, lin2 = branch[0], branch[1], branch[5], branch[7]
    assert (conv.in_channels, conv.out_channels, conv.padding) == (6, 10, (1, 1))
    assert bn.num_features == 10
    assert (lin1.in_features, lin1.out_features) == (10 * 6 * 6, 32)
    assert (lin2.in_features, lin2.out_features) == (32, 10)
    assert branch(torch.randn(3, 6, 12, 12)).shape == (3, 10)


def test_the_last_linear_defaults_to_the_class_count():
    branch = build(["adaptive_avgpool", "flatten", "linear"], num_classes=7)
    assert branch[2].out_features == 7 and branch[2].in_features == 6


def test_pooling_options_and_pairs():
    branch = build([{"type": "avgpool", "kernel_size": [2, 3]}, {"type": "adaptive_avgpool", "output_size": [2, 1]},
                    "flatten", "linear"])
    assert branch[0].kernel_size == (2, 3)
    assert branch[3].in_features == 6 * 2 * 1


def test_bn_on_a_flat_input_is_batchnorm1d():
    branch = build(["flatten", {"type": "linear", "out_features": 16}, "bn", "relu", "linear"])
    assert isinstance(branch[2], nn.BatchNorm1d) and branch[2].num_features == 16


def test_relu_never_runs_in_place():
    assert build(["relu", "flatten", "linear"])[0].inplace is False


def test_conv_on_a_flat_tensor_names_the_exit_and_the_layer():
    with pytest.raises(ScheduleError) as info:
        build(["flatten", {"type": "conv", "out_channels": 4}])
    assert info.value.path == "exits.exit1.branch[1]"
    assert "exit1" in info.value.message and "conv" in info.value.message and "(N, 864)" in info.value.message


def test_linear_on_an_image_suggests_flattening():
    with pytest.raises(ScheduleError) as info:
        build(["linear"])
    assert info.value.path == "exits.exit1.branch[0]" and "flatten" in info.value.message


def test_a_branch_that_does_not_end_in_logits_is_an_error():
    with pytest.raises(ScheduleError) as info:
        build(["flatten", {"type": "linear", "out_features": 5}, "relu"])
    assert info.value.path == "exits.exit1.branch" and "(N, 5)" in info.value.message
    with pytest.raises(ScheduleError):
        build(["adaptive_avgpool"])


def test_a_kernel_larger_than_the_input_is_an_error_on_that_layer():
    with pytest.raises(ScheduleError) as info:
        build([{"type": "conv", "out_channels": 4, "kernel_size": 20}, "flatten", "linear"])
    assert info.value.path == "exits.exit1.branch[0]" and "(N, 6, 12, 12)" in info.value.message


def test_a_hidden_linear_needs_out_features():
    with pytest.raises(ScheduleError) as info:
        build(["flatten", "linear", "relu", "linear"])
    assert info.value.path == "exits.exit1.branch[1]" and "out_features" in info.value.message


def test_bad_dropout_probability_is_an_error():
    with pytest.raises(ScheduleError) as info:
        build([{"type": "dropout", "p": 1.5}, "flatten", "linear"])
    assert info.value.path == "exits.exit1.branch[0]"


def test_layer_specs_round_trip_to_plain_config():
    spec = parse_layer({"type": "conv2d", "out_channels": 4, "kernel_size": [3, 1]})
    assert spec.type == "conv"
    assert spec.to_config() == {"type": "conv", "out_channels": 4, "kernel_size": [3, 1]}
    assert parse_layer("relu").to_config() == "relu"
