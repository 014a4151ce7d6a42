"""Quantization-aware training: EMA-tracked ranges, DoReFa and PACT, and their schedules."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from distill_ee.quantization.quantset import (LayerSettings, QuantizationSet, attach_quantization, dorefa_weights,
                                              pact_quantize, quantization_of, quantizable_layers, unit_quantize)
from distill_ee.errors import ScheduleError
from distill_ee.schedule import schedule_from_text


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_ema_ranges_follow_distillers_bias_corrected_average():
    torch.manual_seed(0)
    model = Net()
    qset = attach_quantization(model, QuantizationSet({"conv1": LayerSettings()}, "q", ema_decay=0.9))
    model.train()
    batches = []
    for v in (1.0, 3.0):
        b = torch.full((2, 1, 5, 5), v)
        b[0, 0, 0, 0] = -v  # each batch spans [-v, v]
        batches.append(b)
    for b in batches:
        model(b)
    r = qset.ranges["conv1"]
    # biased: 0.1 * 1 = 0.1, then 0.9 * 0.1 + 0.1 * 3 = 0.39; corrected by 1 - 0.9^2 = 0.19
    assert float(r.in_high) == pytest.approx(0.39 / 0.19)
    assert float(r.in_low) == pytest.approx(-0.39 / 0.19)
    assert int(r.steps) == 2
    model.eval()
    model(batches[0] * 100)  # evaluation does not move the ranges
    assert float(r.in_high) == pytest.approx(0.39 / 0.19)


def test_dorefa_and_pact_functions_match_the_papers():
    assert unit_quantize(torch.tensor([0.0, 0.3, 0.5, 1.0]), 2).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    w = torch.tensor([-2.0, 0.0, 0.5, 2.0])
    t = torch.tanh(w)
    want = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * 3) / 3 - 1
    assert dorefa_weights(w, 2).tolist() == pytest.approx(want.tolist())
    x = torch.tensor([-1.0, 0.5, 1.4, 3.0], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    y = pact_quantize(x, alpha, 2)  # levels 0, 2/3, 4/3, 2
    assert y.tolist() == pytest.approx([0.0, 2 / 3, 4 / 3, 2.0])
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # straight through inside [0, alpha]
    assert float(alpha.grad) == 1.0  # one sample clipped at alpha


PACT = """
quantizers:
  pact_quantizer:
    class: PACTQuantizer
    act_clip_init_val: 6.0
    act_clip_decay: 0.0001
    bits_activations: 4
    bits_weights: 3
    overrides:
      conv1: {bits_weights: null, bits_activations: null}
      fc: {bits_weights: null, bits_activations: null}
policies:
  - quantizer: {instance_name: pact_quantizer}
    starting_epoch: 0
    ending_epoch: 10
    frequency: 1
"""


@pytest.mark.parametrize("cls", ["PACTQuantizer", "DorefaQuantizer"])
def test_research_quantizers_train_with_fake_quantization(cls):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    text = PACT if cls == "PACTQuantizer" else PACT.replace("PACTQuantizer", "DorefaQuantizer").replace(
        "    act_clip_init_val: 6.0\n    act_clip_decay: 0.0001\n", "")
    scheduler = schedule_from_text(model, optimizer, text, example_input=torch.zeros(1, 1, 8, 8))
    qset = quantization_of(model)
    assert qset.settings["conv2"].bits_inputs == 4 and qset.settings["conv2"].bits_weights == 3
    assert qset.settings["conv1"].bits_weights is None and not qset.active
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    scheduler.on_epoch_begin(0)
    assert qset.active
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if cls == "PACTQuantizer":
        alpha = qset.alphas["conv2"]
        assert float(alpha.detach()) == 6.0 and alpha.grad is not None
        assert any(g["weight_decay"] == 0.0001 for g in optimizer.param_groups if any(p is alpha for p in g["params"]))
    assert model.conv2.weight.grad is not None and model.conv2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("conv1: {bits_weights", "conv1: {bits_wieghts"),
     "pact_quantizer.overrides.conv1.bits_wieghts: unknown key"),
    (lambda t: t.replace("act_clip_init_val: 6.0", "act_clip_init_val: 0"),
     "pact_quantizer.act_clip_init_val: act_clip_init_val must be above 0"),
    (lambda t: t.replace("bits_weights: 3", "bits_weights: 3\n    bits_bias: 8"),
     "pact_quantizer.bits_bias: biases stay in float here"),
    (lambda t: t.replace("bits_activations: 4", "bits_activations: 1"),
     "pact_quantizer.bits_activations: bits must be an integer from 2 to 16"),
    (lambda t: t.replace("PACTQuantizer\n    act_clip_init_val: 6.0\n    act_clip_decay: 0.0001",
                         "QuantAwareTrainRangeLinearQuantizer\n    ema_decay: 1.0"),
     "pact_quantizer.ema_decay: ema_decay must be strictly between 0 and 1"),
])
def test_bad_quantizer_arguments_are_located(edit, words):
    with pytest.raises(ScheduleError) as err:
        schedule_from_text(Net(), torch.optim.SGD(Net().parameters(), lr=0.1), edit(PACT), file="q.yaml",
                           example_input=torch.zeros(1, 1, 8, 8))
    assert str(err.value).startswith("q.yaml:") and f"quantizers.{words}" in str(err.value), str(err.value)


@pytest.mark.slow
def test_the_int8_export_is_close_to_the_simulated_quantization(tmp_path):
    from distill_ee.deploy import MultiExitSession
    from distill_ee.deploy.quantize import quantize_export
    from distill_ee.early_exit import EarlyExits
    from distill_ee.early_exit.onnx_export import export_onnx
    from distill_ee.quantization import collect_stats

    torch.manual_seed(0)
    model = Net().eval()
    exits = EarlyExits.from_config({"exits": {"e1": {"attach": "conv1", "branch": ["adaptive_avgpool", "flatten",
                                                                                "linear"]}}},
                                   model, num_classes=10, input_shape=(1, 8, 8))
    x = torch.rand(64, 1, 8, 8)
    export_onnx(exits.multi_exit_model().eval(), model, tmp_path / "fp32")
    quantize_export(tmp_path / "fp32", tmp_path / "int8", x.numpy())
    settings = LayerSettings(mode_activations="ASYMMETRIC_UNSIGNED", mode_weights="SYMMETRIC", per_channel_wts=True)
    qset = attach_quantization(model, QuantizationSet({n: settings for n, _ in quantizable_layers(model)}, "q"))
    qset.set_ranges(collect_stats(model, [x]))
    with torch.no_grad():
        simulated = [z.numpy() for z in exits.multi_exit_model().eval().simulate(x)]
        qset.active = False
        floats = [z.numpy() for z in exits.multi_exit_model().eval().simulate(x)]
    int8 = MultiExitSession(tmp_path / "int8").simulate(x.numpy())
    for s, q, f in zip(simulated, int8, floats):
        scale = np.abs(f).max()
        # the same ranges and modes: ONNX Runtime's integer kernels land within a few quantization steps of the
        # simulation (it also quantizes the pooling and ReLU outputs the simulation leaves in float)
        assert np.abs(q - s).max() < 0.05 * scale
        assert math.isfinite(float(np.abs(q - s).mean()))


def test_distillers_quant_aware_training_schedule_loads_unchanged():
    text = """
quantizers:
  linear_quantizer:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 8
    mode: 'ASYMMETRIC_UNSIGNED'  # Can try "SYMMETRIC" as well
    ema_decay: 0.999   # Decay value for exponential moving average tracking of activation ranges
    per_channel_wts: True

policies:
    - quantizer:
        instance_name: linear_quantizer
      starting_epoch: 0
      ending_epoch: 300
      frequency: 1
"""
    model = Net()
    scheduler = schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), text,
                                   example_input=torch.zeros(1, 1, 8, 8))
    qset = quantization_of(model)
    assert qset.ema_decay == 0.999 and qset.layers == ["conv1", "conv2", "fc"]
    assert qset.settings["fc"].mode_activations == "ASYMMETRIC_UNSIGNED" and qset.settings["fc"].per_channel_wts
    assert [p.kind for p in scheduler.policies] == ["quantizer"]
