"""Linear quantization in Distiller's four modes and five clip modes, checked against Distiller's formulas written
out here and the figures of Distiller's own unit tests (tests/test_quant_utils.py)."""
import pytest
import torch

from distill_ee.errors import ConfigError
from distill_ee.quantization import (ClipMode, LinearQuantMode, dequantize, fake_quantize, integer_range,
                                     quant_params, quantize, stats_range, tensor_range, weight_range)
from distill_ee.quantization.linear import (ALPHA_GAUSS, ALPHA_GAUSS_POSITIVE, ALPHA_LAPLACE, ALPHA_LAPLACE_POSITIVE,
                                            parse_enum)

SYM, RESTRICTED = LinearQuantMode.SYMMETRIC, LinearQuantMode.SYMMETRIC_RESTRICTED
UNSIGNED, SIGNED = LinearQuantMode.ASYMMETRIC_UNSIGNED, LinearQuantMode.ASYMMETRIC_SIGNED
X = torch.tensor([-1.0, -0.5, 0.0, 0.26, 2.0])
#: Distiller's test tensor (36 values)
DISTILLER_T = torch.tensor([-93, 33, -77, -42, -89, -55, 79, -19, -94, 69, -46, -88, 19, -43, -38, 30, -56, 87,
                            27, -86, 81, -60, -19, 59, 58, -47, -26, 12, -74, 83, -83, -28, 69, 63, -95, -87]).float()


def distiller_symmetric(bits, saturation, restricted):
    """Distiller's symmetric_linear_quantization_params, written out."""
    n = 2 ** (bits - 1) - 1 if restricted else (2 ** bits - 1) / 2
    return n / (saturation if saturation != 0 else n)


def distiller_asymmetric(bits, low, high, signed):
    """Distiller's asymmetric_linear_quantization_params, written out."""
    n = 2 ** bits - 1
    low, high = min(low, 0.0), max(high, 0.0)
    scale = n / ((high - low) or n)
    return scale, round(scale * low) + (2 ** (bits - 1) if signed else 0)


@pytest.mark.parametrize("saturation, restricted, scale", [
    (4.0, False, 31.875), (4.0, True, 31.75), (10.0, False, 12.75), (10.0, True, 12.7), (0.0, False, 1.0),
    (0.0, True, 1.0)])
def test_symmetric_scales_are_distillers_own_test_figures(saturation, restricted, scale):
    got, zp = quant_params(torch.tensor(-saturation), torch.tensor(saturation / 2), 8, RESTRICTED if restricted else SYM)
    assert float(got) == pytest.approx(scale) and float(zp) == 0
    assert float(got) == pytest.approx(distiller_symmetric(8, saturation, restricted))


@pytest.mark.parametrize("low, high, mode, scale, zp", [
    (-2.0, 10.0, UNSIGNED, 21.25, -42), (-2.0, 10.0, SIGNED, 21.25, 86), (5.0, 10.0, UNSIGNED, 25.5, 0),
    (-10.0, -5.0, UNSIGNED, 25.5, -255), (0.0, 0.0, UNSIGNED, 1.0, 0)])
def test_asymmetric_parameters_are_distillers_own_test_figures(low, high, mode, scale, zp):
    got, got_zp = quant_params(torch.tensor(low), torch.tensor(high), 8, mode)
    assert float(got) == pytest.approx(scale) and float(got_zp) == zp
    assert (float(got), float(got_zp)) == pytest.approx(distiller_asymmetric(8, low, high, mode is SIGNED))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("mode", list(LinearQuantMode))
def test_every_mode_and_bits_quantizes_as_distillers_formulas_do(bits, mode):
    x = torch.linspace(-3.0, 5.0, 97)
    low, high = float(x.min()), float(x.max())
    if mode in (SYM, RESTRICTED):
        scale, zp = distiller_symmetric(bits, max(abs(low), abs(high)), mode is RESTRICTED), 0.0
        top = 2 ** (bits - 1) - 1
        lowest = -top if mode is RESTRICTED else -top - 1
    else:
        scale, zp = distiller_asymmetric(bits, low, high, mode is SIGNED)
        lowest, top = (-2 ** (bits - 1), 2 ** (bits - 1) - 1) if mode is SIGNED else (0, 2 ** bits - 1)
    assert integer_range(bits, mode) == (lowest, top)
    expected = torch.clamp(torch.round(torch.tensor(scale) * x - zp), lowest, top)
    got_scale, got_zp = quant_params(torch.tensor(low), torch.tensor(high), bits, mode)
    q = quantize(x, got_scale, got_zp, bits, mode)
    assert torch.equal(q, expected)
    assert torch.equal(dequantize(q, got_scale, got_zp), (expected + zp) / torch.tensor(scale))


def test_symmetric_uses_the_whole_signed_range_and_restricted_leaves_out_its_lowest_integer():
    scale, zp = quant_params(torch.tensor(-2.0), torch.tensor(1.0), 8, SYM)
    assert quantize(torch.tensor([-2.0, 2.0]), scale, zp, 8, SYM).tolist() == [-128.0, 127.0]  # 127.5 rounds to 128
    scale, zp = quant_params(torch.tensor(-2.0), torch.tensor(1.0), 8, RESTRICTED)
    assert quantize(torch.tensor([-2.0, 2.0]), scale, zp, 8, RESTRICTED).tolist() == [-127.0, 127.0]
    assert integer_range(4, SYM) == (-8, 7) and integer_range(4, RESTRICTED) == (-7, 7)
    assert float(quant_params(torch.tensor(-4.0), torch.tensor(4.0), 4, SYM)[0]) == 7.5 / 4


def test_asymmetric_unsigned_maps_the_range_onto_0_to_255_with_0_exact():
    scale, zp = quant_params(torch.tensor(-1.0), torch.tensor(2.0), 8, UNSIGNED)
    assert float(scale) == pytest.approx(85.0) and float(zp) == -85.0  # 255 / 3, round(85 * -1)
    q = quantize(X, scale, zp, 8, UNSIGNED)
    assert q.tolist() == [0.0, 42.0, 85.0, 107.0, 255.0]  # 85 * x + 85 = [0, 42.5, 85, 107.1, 255]
    assert float(dequantize(q, scale, zp)[2]) == 0.0


def test_values_outside_the_range_saturate():
    scale, zp = quant_params(torch.tensor(0.0), torch.tensor(1.0), 4, UNSIGNED)
    assert quantize(torch.tensor([-3.0, 9.0]), scale, zp, 4, UNSIGNED).tolist() == [0, 15]


def test_per_channel_weights_get_one_range_per_output_channel():
    w = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 0.25]]], [[[0.0, 0.0]]]])  # 3 output channels, the last all zero
    low, high = weight_range(w, per_channel=True)
    assert low.flatten().tolist() == [-2.0, 0.25, 0.0] and high.flatten().tolist() == [1.0, 0.5, 0.0]
    scale, zp = quant_params(low, high, 8, SYM)
    assert scale.flatten().tolist() == pytest.approx([127.5 / 2, 127.5 / 0.5, 1.0])
    assert quantize(w, scale, zp, 8, SYM).flatten().tolist() == [64.0, -128.0, 127.0, 64.0, 0.0, 0.0]


def test_fake_quantization_passes_the_gradient_straight_through_within_the_range():
    x = torch.tensor([0.3, 0.7, 1.5, -0.4], requires_grad=True)
    scale, zp = quant_params(torch.tensor(0.0), torch.tensor(1.0), 2, UNSIGNED)
    y = fake_quantize(x, scale, zp, 2, UNSIGNED)
    assert y.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0, 0.0])  # 4 levels: 0, 1/3, 2/3, 1
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # saturated values get no gradient


STATS = {"min": -4.0, "max": 10.0, "avg_min": -1.0, "avg_max": 6.0, "mean": 1.0, "std": 2.0, "b": 1.5}


def test_clip_modes_take_their_range_from_the_statistics():
    assert stats_range(STATS, ClipMode.NONE) == (-4.0, 10.0)
    assert stats_range(STATS, ClipMode.AVG) == (-1.0, 6.0)
    assert stats_range(STATS, ClipMode.N_STD, n_std=3) == (-4.0, 7.0)  # mean - 6 is below min: min


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("half_range", [False, True])
def test_aciq_clipping_from_statistics_is_distillers(bits, half_range):
    # Distiller's AciqSymmetricClipper: |mean| + alpha either side; AciqAsymmetricClipper: from
    # max(avg_min, mean - alpha), over 2 alpha (alpha with half_range)
    gauss = STATS["std"] * (ALPHA_GAUSS_POSITIVE if half_range else ALPHA_GAUSS)[bits]
    laplace = STATS["b"] * (ALPHA_LAPLACE_POSITIVE if half_range else ALPHA_LAPLACE)[bits]
    for clip, alpha in ((ClipMode.GAUSS, gauss), (ClipMode.LAPLACE, laplace)):
        low = max(STATS["avg_min"], STATS["mean"] - alpha)
        assert stats_range(STATS, clip, bits=bits, mode=UNSIGNED, half_range=half_range) == pytest.approx(
            (low, low + (alpha if half_range else 2 * alpha)))
        symmetric_alpha = STATS["std"] * ALPHA_GAUSS[bits] if clip is ClipMode.GAUSS else STATS["b"] * \
            ALPHA_LAPLACE[bits]
        edge = abs(STATS["mean"]) + symmetric_alpha  # symmetric ACIQ ignores half_range
        assert stats_range(STATS, clip, bits=bits, mode=SYM, half_range=half_range) == pytest.approx((-edge, edge))
    assert ALPHA_GAUSS[8] == 3.92 and ALPHA_LAPLACE[8] == 9.89 and ALPHA_LAPLACE_POSITIVE[4] == 6.2


def test_aciq_needs_b_for_laplace_and_bits_its_tables_cover():
    without_b = {k: v for k, v in STATS.items() if k != "b"}
    with pytest.raises(ConfigError, match="LAPLACE clipping needs the statistics' `b`"):
        stats_range(without_b, ClipMode.LAPLACE)
    with pytest.raises(ConfigError, match="GAUSS clipping is defined for 1 to 8 bits, got 12"):
        stats_range(STATS, ClipMode.GAUSS, bits=12)


def test_dynamic_ranges_from_the_tensor_itself_are_distillers_test_figures():
    t2, t4 = DISTILLER_T.reshape(6, 6), DISTILLER_T.reshape(2, 2, 3, 3)
    assert [float(v) for v in tensor_range(t2, ClipMode.NONE)] == [-95.0, 87.0]
    # AVG: the average over samples (dimension 0) of each sample's min and max
    assert [float(v) for v in tensor_range(t2, ClipMode.AVG)] == [-83.0, 72.0]
    assert [float(v) for v in tensor_range(t4, ClipMode.AVG)] == [-94.5, 85.0]
    # N_STD: the unbiased standard deviation (62.874... for this tensor), within min and max
    mean, std = -16.0, 62.87447738647461
    assert [float(v) for v in tensor_range(DISTILLER_T, ClipMode.N_STD, n_std=1)] == pytest.approx(
        [mean - std, mean + std])
    assert [float(v) for v in tensor_range(DISTILLER_T, ClipMode.N_STD, n_std=2)] == pytest.approx([-95.0, 87.0])
    # GAUSS on a tensor: the unbiased std; LAPLACE: the mean absolute deviation; asymmetric from the tensor's min
    b = float((DISTILLER_T - DISTILLER_T.mean()).abs().mean())
    low = max(-95.0, mean - b * ALPHA_LAPLACE[8])
    assert [float(v) for v in tensor_range(t2, ClipMode.LAPLACE, bits=8)] == pytest.approx(
        [low, low + 2 * b * ALPHA_LAPLACE[8]])
    edge = abs(mean) + std * ALPHA_GAUSS[4]
    assert [float(v) for v in tensor_range(t2, ClipMode.GAUSS, bits=4, mode=SYM)] == pytest.approx([-edge, edge])


def test_modes_are_parsed_by_name_with_a_suggestion():
    assert parse_enum(LinearQuantMode, "asymmetric_unsigned", "quantization mode") is UNSIGNED
    assert parse_enum(LinearQuantMode, "symmetric_restricted", "quantization mode") is RESTRICTED
    with pytest.raises(ConfigError, match="did you mean 'SYMMETRIC'"):
        parse_enum(LinearQuantMode, "SYMETRIC", "quantization mode")
