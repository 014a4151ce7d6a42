"""Temperature scaling: fitted on validation logits, applied to early exits only, folded into branch weights."""
import math

import pytest
import torch
from torch import nn

from distill_ee.early_exit.temperature import (apply_temperatures, fit_temperature, fit_temperatures,
                                               fold_temperature, fold_temperatures, last_affine_layer)
from distill_ee.errors import ConfigError
from distill_ee.early_exit.exits import EarlyExits


def overconfident(temperature, n=4000, classes=10, seed=0):
    """Labels drawn from softmax(z) and logits ``temperature * z``: the best temperature is ``temperature``."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=gen) * 2.0
    targets = torch.multinomial(torch.softmax(z, dim=1), 1, generator=gen).squeeze(1)
    return z * temperature, targets


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_temperature_of_the_data(true_t):
    logits, targets = overconfident(true_t)
    assert fit_temperature(logits, targets) == pytest.approx(true_t, rel=0.1)


def test_fitted_temperature_lowers_the_validation_nll():
    logits, targets = overconfident(3.0)
    t = fit_temperature(logits, targets)
    before = nn.functional.cross_entropy(logits, targets)
    after = nn.functional.cross_entropy(logits / t, targets)
    assert float(after) < float(before)


def test_one_temperature_per_early_exit_and_the_final_classifier_is_left_alone():
    hot, targets = overconfident(3.0)
    cold, _ = overconfident(0.5)
    final = torch.randn_like(hot)
    temps = fit_temperatures([hot, cold, final], targets)
    assert len(temps) == 2 and temps[0] > 2.0 and temps[1] < 0.7
    scaled = apply_temperatures([hot, cold, final], temps)
    assert torch.allclose(scaled[0], hot / temps[0]) and torch.allclose(scaled[1], cold / temps[1])
    assert scaled[2] is final
    assert apply_temperatures([hot, final], None)[0] is hot
    with pytest.raises(ConfigError, match="one temperature per early exit"):
        apply_temperatures([hot, cold, final], [2.0])


def branch(*tail):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), *tail)


@pytest.mark.parametrize("tail", [(), (nn.ReLU(),), (nn.Dropout(0.5), nn.Identity())])
def test_folding_divides_the_branch_logits_by_the_temperature(tail):
    module = branch(*tail).eval()
    x = torch.randn(6, 3, 8, 8)
    before = module(x)
    fold_temperature(module, 2.5)
    assert torch.allclose(module(x), before / 2.5, atol=1e-6)


def test_branches_whose_logits_do_not_come_from_an_affine_layer_cannot_be_folded():
    with pytest.raises(ConfigError, match="cannot fold"):
        last_affine_layer(branch(nn.BatchNorm1d(5)))
    with pytest.raises(ConfigError, match="cannot fold"):
        last_affine_layer(nn.Sequential(nn.Flatten(), nn.Softmax(dim=1)))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True])
def test_temperatures_must_be_positive_numbers(bad):
    with pytest.raises(ConfigError, match="positive number"):
        fold_temperature(branch(), bad)


def test_fold_temperatures_scales_every_exit_of_an_exit_set(ee, lenet):
    config = ee.exits_config(["conv1", "conv2"])
    policy = EarlyExits.from_config(config, lenet, num_classes=10, input_shape=(1, 28, 28))
    multi = policy.multi_exit_model().eval()
    x = torch.randn(5, 1, 28, 28)
    before = multi.simulate(x)
    fold_temperatures(policy.exit_set, [2.0, 0.5])
    after = multi.simulate(x)
    assert torch.allclose(after[0], before[0] / 2.0, atol=1e-6)
    assert torch.allclose(after[1], before[1] / 0.5, atol=1e-5)
    assert torch.equal(after[2], before[2])
    with pytest.raises(ConfigError, match="one temperature per exit"):
        fold_temperatures(policy.exit_set, [2.0])


def test_nothing_is_folded_when_one_temperature_is_invalid(ee, lenet):
    policy = EarlyExits.from_config(ee.exits_config(["conv1", "conv2"]), lenet, num_classes=10,
                                    input_shape=(1, 28, 28))
    weights = [p.clone() for p in policy.branch_parameters()]
    with pytest.raises(ConfigError):
        fold_temperatures(policy.exit_set, [2.0, -1.0])
    assert all(torch.equal(a, b) for a, b in zip(weights, policy.branch_parameters()))
