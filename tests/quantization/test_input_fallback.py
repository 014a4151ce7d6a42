"""inputs_quant_auto_fallback and input_overrides: how a quantized layer whose input arrives unquantized (from a
layer that is not quantized, the model's input, or an operation of the forward code) quantizes it, as Distiller."""
import pytest
import torch
from torch import nn

from distill_ee.errors import DistillEEError, ScheduleError
from distill_ee.quantization import LinearQuantMode, collect_stats, fake_quantize, quant_params, weight_range
from distill_ee.schedule import schedule_from_text

MODE = LinearQuantMode.ASYMMETRIC_UNSIGNED


def config(fallback="true", b_override="", a_override="{bits_activations: null, bits_weights: null}"):
    return f"""
quantizers:
  post_train_quantizer:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 8
    mode: ASYMMETRIC_UNSIGNED
    inputs_quant_auto_fallback: {fallback}
    overrides:
      a: {a_override}
      b: {{bits_weights: 8{b_override}}}
"""


class Net(nn.Module):
    """``a`` (not quantized) feeds ``b`` (quantized) directly; with ``functional``, through ``torch.relu``."""

    def __init__(self, functional=False):
        super().__init__()
        self.a, self.b, self.functional = nn.Linear(4, 6), nn.Linear(6, 3), functional

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.relu(h) if self.functional else h)


def quantized(text, model=None):
    torch.manual_seed(0)
    model = model or Net()
    scheduler = schedule_from_text(model, None, text, example_input=torch.zeros(1, 4), file="ptq.yaml")
    x = torch.randn(32, 4)
    scheduler.components["quantizers"]["post_train_quantizer"].quantize(stats=collect_stats(model, [x]))
    return model, x


def fq(t, low, high, bits=8):
    scale, zero_point = quant_params(low, high, bits, MODE)
    return fake_quantize(t, scale, zero_point, bits, MODE)


def distiller_b(model, x, input_bits=8):
    """b's input quantized by b's output settings from its input statistics (min and max: clip_acts NONE),
    its weights and its output quantized; a runs in float."""
    with torch.no_grad():
        h = model.a(x)
        w = model.b.weight
        out_float = torch.nn.functional.linear(h, w, model.b.bias)
        out = torch.nn.functional.linear(fq(h, h.min(), h.max(), input_bits), fq(w, *weight_range(w, False)),
                                         model.b.bias)
        return fq(out, out_float.min(), out_float.max())


def run(model, x):
    with torch.no_grad():
        return model(x)


def test_by_default_an_input_from_a_layer_not_quantized_is_quantized_by_the_layers_output_settings():
    model, x = quantized(config())
    assert torch.equal(run(model, x), distiller_b(model, x))


def test_without_the_fallback_such_an_input_is_refused_naming_the_layer_and_the_remedies():
    model, x = quantized(config("false"))
    with pytest.raises(DistillEEError, match="layer 'b': its input arrives unquantized") as err:
        run(model, x)
    assert "input_overrides" in str(err.value) and "inputs_quant_auto_fallback" in str(err.value)
    assert "\n" not in str(err.value)


def test_without_the_fallback_an_input_from_output_equals_the_fallback():
    model, x = quantized(config("false", ", input_overrides: {0: {from_output: true}}"))
    assert torch.equal(run(model, x), distiller_b(model, x))


def test_explicit_input_settings_take_their_own_bits_with_or_without_the_fallback():
    for fallback in ("true", "false"):
        model, x = quantized(config(fallback, ", input_overrides: {0: {bits_activations: 4}}"))
        assert torch.equal(run(model, x), distiller_b(model, x, input_bits=4))


def test_an_input_from_a_quantized_layer_needs_no_fallback_and_the_flag_changes_nothing():
    quantized_a = "{bits_activations: 8, input_overrides: {0: {from_output: true}}}"
    with_fallback, x = quantized(config("true", a_override=quantized_a))
    without, _ = quantized(config("false", a_override=quantized_a))
    assert torch.equal(run(with_fallback, x), run(without, x))


def test_an_operation_of_the_forward_code_drops_the_quantization_as_in_distiller():
    model, x = quantized(config("false", a_override="{bits_activations: 8, input_overrides: {0: {from_output: "
                                                     "true}}}"), Net(functional=True))
    with pytest.raises(DistillEEError, match="layer 'b'"):
        run(model, x)


def test_the_models_own_input_needs_explicit_settings_without_the_fallback():
    model, x = quantized(config("false", a_override="{bits_activations: 8}"))
    with pytest.raises(DistillEEError, match="layer 'a'"):
        run(model, x)


@pytest.mark.parametrize("text, where, words", [
    (config("maybe"), "post_train_quantizer.inputs_quant_auto_fallback", "must be true or false"),
    (config(b_override=", input_overrides: {0: {from_outputs: true}}"),
     "post_train_quantizer.overrides.b.input_overrides.0.from_outputs", "did you mean 'from_output'"),
    (config(b_override=", input_overrides: {1: {from_output: true}}"),
     "post_train_quantizer.overrides.b.input_overrides.1", "one input (0)"),
    (config(b_override=", input_overrides: {0: {from_output: 1}}"),
     "post_train_quantizer.overrides.b.input_overrides.0.from_output", "must be true or false"),
    (config(b_override=", input_overrides: {0: {clip_acts: AVERAGE}}"),
     "post_train_quantizer.overrides.b.input_overrides.0.clip_acts", "not a clip mode"),
    (config(b_override=", input_overrides: {0: {bits_activations: 40}}"),
     "post_train_quantizer.overrides.b.input_overrides.0.bits_activations", "bits must be an integer"),
    (config(b_override=", quantize_inputs: no_thanks"), "post_train_quantizer.overrides.b.quantize_inputs",
     "must be true or false"),
])
def test_bad_values_are_located_one_line_errors(text, where, words):
    with pytest.raises(ScheduleError) as err:
        quantized(text)
    message = str(err.value)
    assert message.startswith("ptq.yaml:") and where in message and words in message, message
    assert "\n" not in message
