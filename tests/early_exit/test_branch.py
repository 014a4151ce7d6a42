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
    expected = {"conv", "bn", "relu", "maxpool", "avgpool", "adaptive_avgpool", "flatten", "linear", "dropout",
                "layernorm", "cls_token", "token_mean", "channels_first"}
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


def test_cls_token_takes_one_token_of_a_sequence():
    branch = build(["cls_token", "linear"], shape=(2, 17, 32))
    x = torch.randn(3, 17, 32)
    assert branch[1].in_features == 32
    assert torch.equal(branch[0](x), x[:, 0])
    assert torch.equal(build([{"type": "cls_token", "index": -1}, "linear"], shape=(2, 17, 32))[0](x), x[:, 16])


def test_cls_token_outside_the_sequence_is_an_error_naming_the_token_count():
    with pytest.raises(ScheduleError) as info:
        build([{"type": "cls_token", "index": 17}, "linear"], shape=(2, 17, 32))
    assert info.value.path == "exits.exit1.branch[0]" and "17 tokens" in info.value.message
    with pytest.raises(ScheduleError) as info:
        build(["cls_token", "linear"])
    assert "(N, T, D)" in info.value.message and "(N, 6, 12, 12)" in info.value.message


def test_token_mean_averages_tokens_or_channel_last_positions():
    tokens, nhwc = torch.randn(3, 17, 32), torch.randn(3, 8, 8, 16)
    assert torch.allclose(build(["token_mean", "linear"], shape=(2, 17, 32))[0](tokens), tokens.mean(1))
    branch = build(["token_mean", "linear"], shape=(2, 8, 8, 16))
    assert branch[1].in_features == 16 and torch.allclose(branch[0](nhwc), nhwc.mean((1, 2)))
    with pytest.raises(ScheduleError, match="token sequence"):
        build(["flatten", "token_mean", "linear"])


def test_layernorm_normalizes_the_last_dimension():
    branch = build(["layernorm", "token_mean", "linear"], shape=(2, 8, 8, 16))
    assert isinstance(branch[0], nn.LayerNorm) and branch[0].normalized_shape == (16,)
    assert build(["layernorm", "cls_token", "linear"], shape=(2, 17, 32))[0].normalized_shape == (32,)


def test_channels_first_lets_image_layers_follow_channel_last_features():
    branch = build(["channels_first", {"type": "conv", "out_channels": 4, "kernel_size": 1}, "adaptive_avgpool",
                    "flatten", "linear"], shape=(2, 8, 8, 16))
    nhwc = torch.randn(3, 8, 8, 16)
    assert branch[1].in_channels == 16
    assert torch.equal(branch[0](nhwc), nhwc.permute(0, 3, 1, 2))
    with pytest.raises(ScheduleError, match=r"\(N, H, W, C\)"):
        build(["flatten", "channels_first"])


def test_image_and_linear_layers_on_a_sequence_point_to_the_token_layers():
    for raw in (["linear"], [{"type": "conv", "out_channels": 4}], ["adaptive_avgpool"], ["bn"]):
        with pytest.raises(ScheduleError) as info:
            build(raw, shape=(2, 17, 32))
        assert "cls_token" in info.value.message and "token_mean" in info.value.message, raw


def test_linear_on_channel_last_features_points_to_token_mean_and_channels_first():
    with pytest.raises(ScheduleError) as info:
        build(["linear"], shape=(2, 8, 8, 16))
    assert "token_mean" in info.value.message and "channels_first" in info.value.message
    with pytest.raises(ScheduleError) as info:
        build(["linear"], shape=(2, 16, 8, 8))  # channel-first: no channel-last hint
    assert "channels_first" not in info.value.message
