"""Linear quantization in Distiller's three modes, checked against hand computations."""
import pytest
import torch

from distill_ee.errors import ConfigError
from distill_ee.quantization import (ClipMode, LinearQuantMode, dequantize, fake_quantize, integer_range,
                                     quant_params, quantize, stats_range, weight_range)
from distill_ee.quantization.linear import parse_enum

X = torch.tensor([-1.0, -0.5, 0.0, 0.26, 2.0])


def test_symmetric_8_bits_scales_the_largest_magnitude_to_127():
    scale, zp = quant_params(torch.tensor(-1.0), torch.tensor(2.0), 8, LinearQuantMode.SYMMETRIC)
    assert float(scale) == pytest.approx(127 / 2) and float(zp) == 0
    q = quantize(X, scale, zp, 8, LinearQuantMode.SYMMETRIC)
    # 63.5 * [-1, -0.5, 0, 0.26, 2] = [-63.5, -31.75, 0, 16.51, 127], rounded half to even
    assert q.tolist() == [-64.0, -32.0, 0.0, 17.0, 127.0]
    assert dequantize(q, scale, zp).tolist() == pytest.approx([-64 / 63.5, -32 / 63.5, 0.0, 17 / 63.5, 2.0])
    assert integer_range(8, LinearQuantMode.SYMMETRIC) == (-127, 127)


def test_asymmetric_unsigned_maps_the_range_onto_0_to_255_with_0_exact():
    scale, zp = quant_params(torch.tensor(-1.0), torch.tensor(2.0), 8, LinearQuantMode.ASYMMETRIC_UNSIGNED)
    assert float(scale) == pytest.approx(85.0)  # 255 / 3
    assert float(zp) == -85.0  # round(85 * -1)
    q = quantize(X, scale, zp, 8, LinearQuantMode.ASYMMETRIC_UNSIGNED)
    # 85 * x + 85 = [0, 42.5, 85, 107.1, 255]
    assert q.tolist() == [0.0, 42.0, 85.0, 107.0, 255.0]
    assert float(dequantize(q, scale, zp)[2]) == 0.0  # zero is exact
    # a range that does not contain 0 is widened to: [0.5, 2] becomes [0, 2]
    scale, zp = quant_params(torch.tensor(0.5), torch.tensor(2.0), 8, LinearQuantMode.ASYMMETRIC_UNSIGNED)
    assert float(scale) == pytest.approx(127.5) and float(zp) == 0.0


def test_asymmetric_signed_is_unsigned_shifted_by_128():
    scale, zp = quant_params(torch.tensor(-1.0), torch.tensor(2.0), 8, LinearQuantMode.ASYMMETRIC_SIGNED)
    assert float(zp) == -85.0 + 128
    q = quantize(X, scale, zp, 8, LinearQuantMode.ASYMMETRIC_SIGNED)
    assert q.tolist() == [-128.0, -86.0, -43.0, -21.0, 127.0]
    assert integer_range(4, LinearQuantMode.ASYMMETRIC_SIGNED) == (-8, 7)


def test_values_outside_the_range_saturate():
    scale, zp = quant_params(torch.tensor(0.0), torch.tensor(1.0), 4, LinearQuantMode.ASYMMETRIC_UNSIGNED)
    assert quantize(torch.tensor([-3.0, 9.0]), scale, zp, 4, LinearQuantMode.ASYMMETRIC_UNSIGNED).tolist() == [0, 15]


def test_per_channel_weights_get_one_range_per_output_channel():
    w = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 0.25]]]])  # 2 output channels
    low, high = weight_range(w, per_channel=True)
    assert low.flatten().tolist() == [-2.0, 0.25] and high.flatten().tolist() == [1.0, 0.5]
    scale, zp = quant_params(low, high, 8, LinearQuantMode.SYMMETRIC)
    assert scale.flatten().tolist() == pytest.approx([127 / 2, 127 / 0.5])
    q = quantize(w, scale, zp, 8, LinearQuantMode.SYMMETRIC)
    assert q.flatten().tolist() == [64.0, -127.0, 127.0, 64.0]


def test_fake_quantization_passes_the_gradient_straight_through_within_the_range():
    x = torch.tensor([0.3, 0.7, 1.5, -0.4], requires_grad=True)
    scale, zp = quant_params(torch.tensor(0.0), torch.tensor(1.0), 2, LinearQuantMode.ASYMMETRIC_UNSIGNED)
    y = fake_quantize(x, scale, zp, 2, LinearQuantMode.ASYMMETRIC_UNSIGNED)
    assert y.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0, 0.0])  # 4 levels: 0, 1/3, 2/3, 1
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # saturated values get no gradient


def test_clip_modes_take_their_range_from_the_statistics():
    stats = {"min": -4.0, "max": 10.0, "avg_min": -1.0, "avg_max": 6.0, "mean": 1.0, "std": 2.0}
    assert stats_range(stats, ClipMode.NONE) == (-4.0, 10.0)
    assert stats_range(stats, ClipMode.AVG) == (-1.0, 6.0)
    assert stats_range(stats, ClipMode.N_STD, n_std=3) == (-4.0, 7.0)  # mean - 6 is below min: min


def test_modes_are_parsed_by_name_with_a_suggestion():
    assert parse_enum(LinearQuantMode, "asymmetric_unsigned", "quantization mode") is \
        LinearQuantMode.ASYMMETRIC_UNSIGNED
    with pytest.raises(ConfigError, match="did you mean 'SYMMETRIC'"):
        parse_enum(LinearQuantMode, "SYMETRIC", "quantization mode")
