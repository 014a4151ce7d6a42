"""PostTrainLinearQuantizer: Distiller's arguments in a schedule, simulated quantization with names kept."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit import EarlyExits
from distill_ee.errors import ScheduleError
from distill_ee.quantization import LinearQuantMode, collect_stats, fake_quantize, quant_params, weight_range
from distill_ee.quantization.quantset import detach_quantization, quantization_of
from distill_ee.schedule import schedule_from_text

PTQ = """
quantizers:
  post_train_quantizer:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 8
    bits_accum: 32
    mode: ASYMMETRIC_UNSIGNED
    per_channel_wts: True
    clip_acts: AVG
    overrides:
      conv1:
        input_quantization_settings:
          0:
            bits_activations: 6
      fc.*:
        bits_weights: 4
        clip_acts: NONE
      fc2:
        bits_weights: 8
"""


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc1, self.fc2 = nn.Linear(8 * 8 * 8, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def quantizer(text=PTQ, model=None):
    torch.manual_seed(0)
    model = model or Net()
    scheduler = schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), text,
                                   example_input=torch.zeros(1, 1, 12, 12), file="ptq.yaml")
    return model, scheduler.components["quantizers"]["post_train_quantizer"]


def test_distillers_arguments_and_overrides_by_pattern_first_match_wins():
    _, q = quantizer()
    assert q.defaults.mode_activations == q.defaults.mode_weights == "ASYMMETRIC_UNSIGNED"
    assert q.settings_for("conv1").bits_inputs == 6 and q.settings_for("conv1").bits_activations == 8
    assert q.settings_for("fc2").bits_weights == 4  # `fc.*` comes first and matches fc2 too
    assert q.settings_for("fc1").clip_acts == "NONE" and q.settings_for("conv2") is q.defaults
    assert q.bits_accum == 32


def test_quantized_layers_keep_their_names_and_stay_close_to_float():
    model, q = quantizer()
    x = torch.randn(64, 1, 12, 12)
    with torch.no_grad():
        want = model(x)
    names = [n for n, _ in model.named_parameters()]
    qset = q.quantize(stats=collect_stats(model, [x[:32], x[32:]]))
    assert [n for n, _ in model.named_parameters()] == names
    assert {"quantization.ranges.conv1.in_low", "quantization.ranges.fc2.out_high"} <= \
        {k.replace("__", ".") for k in model.state_dict()}
    with torch.no_grad():
        got = model(x)
    assert not torch.equal(got, want)
    assert (got - want).abs().max() < 0.2 * want.abs().max()  # fc1 and fc2 at 4 bits dominate the error
    assert qset.layers == ["conv1", "conv2", "fc1", "fc2"]
    qset.active = False
    with torch.no_grad():
        assert torch.equal(model(x), want)
    detach_quantization(model)
    assert quantization_of(model) is None and "forward" not in model.conv1.__dict__


def test_pruned_weights_stay_exactly_zero_after_quantization():
    w = torch.randn(8, 4, 3, 3)
    w[::2] = 0.0  # pruned filters
    w[1, :, 0, 0] = 0.0  # pruned elements
    for mode in LinearQuantMode:
        for per_channel in (True, False):
            low, high = weight_range(w, per_channel)
            scale, zp = quant_params(low, high, 8, mode)
            q = fake_quantize(w, scale, zp, 8, mode)
            assert torch.equal(q[w == 0], torch.zeros(int((w == 0).sum())))


def test_exits_are_quantized_too_and_real_early_exit_equals_the_simulated_one():
    torch.manual_seed(0)
    model = Net()
    exits = EarlyExits.from_config({"exits": {"e1": {"attach": "conv1", "branch": ["adaptive_avgpool", "flatten",
                                                                                "linear"], "threshold": 2.25}}},
                                   model, num_classes=10, input_shape=(1, 12, 12))
    _, q = quantizer(model=model)
    x = torch.randn(100, 1, 12, 12)
    qset = q.quantize(stats=collect_stats(model, [x], names=None))
    assert "early_exits.e1.2" in qset.layers  # the branch's linear layer
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        logits = multi.simulate(x)
        entropy = -(logits[0].softmax(1) * logits[0].log_softmax(1)).sum(1)
        exits.set_thresholds([float(entropy.sort().values[49:51].mean())])
        multi = exits.multi_exit_model().eval()
        want, want_index = multi.decide(multi.simulate(x))
        got, got_index = multi(x)
    assert torch.equal(got_index, want_index) and torch.allclose(got, want)
    assert 0 < int((got_index == 0).sum()) < 100


@pytest.mark.parametrize("edit, where, words", [
    (lambda t: t.replace("clip_acts: AVG", "clip_acts: GAUS"), "post_train_quantizer.clip_acts",
     "did you mean 'GAUSS'"),
    (lambda t: t.replace("clip_acts: AVG", "clip_acts: LAPLACE").replace("bits_activations: 8", "bits_activations: 12"),
     "post_train_quantizer.clip_acts", "LAPLACE clipping is defined for 1 to 8 bits of activations, got 12"),
    (lambda t: t.replace("bits_weights: 4", "bits_weights: 4\n        clip_half_range: 1"),
     "post_train_quantizer.overrides['fc.*'].clip_half_range", "must be true or false"),
    (lambda t: t.replace("mode: ASYMMETRIC_UNSIGNED", "mode: ASYMETRIC_UNSIGNED"), "post_train_quantizer.mode",
     "did you mean 'ASYMMETRIC_UNSIGNED'"),
    (lambda t: t.replace("bits_weights: 4", "bits_weights: 40"), "post_train_quantizer.overrides['fc.*'].bits_weights",
     "bits must be an integer from 2 to 16"),
    (lambda t: t.replace("bits_weights: 4", "bits_weight: 4"), "post_train_quantizer.overrides['fc.*'].bits_weight",
     "unknown key 'bits_weight'"),
    (lambda t: t.replace("fc.*:", "'fc(':"), "post_train_quantizer.overrides.fc(:", "not a regular expression"),
])
def test_bad_quantizer_arguments_are_located_errors(edit, where, words):
    with pytest.raises(ScheduleError) as err:
        quantizer(edit(PTQ))
    text = str(err.value)
    assert text.startswith("ptq.yaml:") and f"quantizers.{where}" in text and words in text, text
