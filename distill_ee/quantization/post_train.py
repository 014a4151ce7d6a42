"""``PostTrainLinearQuantizer``: Distiller's post-training range-based linear quantizer, by its names and arguments.

In a schedule's ``quantizers`` section (or a ``--qe-config-file`` holding only that section)::

    quantizers:
      post_train_quantizer:
        class: PostTrainLinearQuantizer
        bits_activations: 8
        bits_parameters: 8          # or bits_weights
        bits_accum: 32
        mode: ASYMMETRIC_UNSIGNED   # or {activations: ..., weights: ...}
        per_channel_wts: true
        clip_acts: AVG              # NONE, AVG, N_STD (with clip_n_stds), GAUSS or LAPLACE
        clip_half_range: false      # GAUSS/LAPLACE of an asymmetric range: the activations are non-negative
        scale_approx_mult_bits: 16  # requantize each output by a 16-bit integer multiplier and a shift
        save_fp_weights: true       # accepted: the simulated quantization keeps the FP32 weights anyway
        model_activation_stats: stats.yaml
        overrides:                  # by layer-name pattern (a regular expression), the first match wins
          conv1: {bits_weights: 8, bits_activations: 8}
          fc: {clip_acts: NONE, input_overrides: {0: {clip_acts: AVG}}}
        inputs_quant_auto_fallback: true  # false: an input arriving unquantized needs input_overrides

It does nothing while training; ``quantize(model, stats)`` then attaches a ``QuantizationSet`` (simulated
quantization of every convolution and linear layer, exit branches included) with activation ranges from the
statistics. The int8 kernels themselves run on ONNX Runtime (``distill_ee.deploy.quantize``).
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..arguments import ArgumentError, Range
from ..context import BuildContext
from ..errors import ConfigError
from ..modules import unwrap
from ..policies.base import Policy
from ..registry import QUANTIZERS, suggest
from .linear import ACIQ_BITS, ClipMode, LinearQuantMode
from .quantset import LayerSettings, QuantizationSet, attach_quantization, quantizable_layers
from .stats import Stats, load_stats

Bits = Annotated[int, Range(2, 16, integer=True)]
#: the keys of an input's settings in ``input_overrides`` (Distiller's)
INPUT_KEYS = ("from_output", "bits_activations", "mode", "clip_acts", "clip_n_stds")
OVERRIDE_KEYS = ("bits_activations", "bits_weights", "bits_parameters", "mode", "per_channel_wts", "clip_acts",
                 "clip_n_stds", "clip_half_range", "input_overrides", "input_quantization_settings", "quantize_inputs")


@QUANTIZERS.register("PostTrainLinearQuantizer")
class PostTrainLinearQuantizer(Policy):
    """Post-training linear quantization of a trained model's convolutions and linear layers (simulated).

    Inputs (Distiller's ``inputs_quant_auto_fallback``, true by default as in Distiller): each quantized layer
    quantizes its input itself, with the range its input statistics give; a tensor does not carry a previous
    layer's quantization here, but the range Distiller would carry with it is that of the same tensor. The
    argument only matters for an input that Distiller sees arrive without quantization: the model's own
    input, the output of a layer not quantized (``bits_activations: null``) or of an operation of the forward
    code (a view, ``torch.relu``, ``+``; leaf modules other than ``nn.Dropout`` and ``nn.Identity`` count as
    quantized, as Distiller fake-quantizes them). With true, such an input is quantized by the layer's output
    settings (bits, mode, clip mode), which is what every input gets; with false, the layer refuses to run
    unless the input has explicit settings: ``input_overrides: {0: {from_output: true}}`` (the output's
    settings) or ``{0: {bits_activations, mode, clip_acts, clip_n_stds}}`` (any of them, the rest as the
    output's), without a half range. ``quantize_inputs`` is accepted in overrides and changes nothing: it
    applies to the non-parameter modules Distiller fake-quantizes, which are not quantized here.
    """

    kind = "quantizer"
    needs_minibatch_hooks = False
    changes_masks_in_minibatches = False

    def __init__(self, model: nn.Module, defaults: LayerSettings, overrides: Optional[Dict[str, Dict[str, Any]]]
                 = None, model_activation_stats: Optional[str] = None, bits_accum: int = 32, name: str = ""):
        super().__init__(name)
        self.model = model
        self.defaults = defaults
        self.overrides = dict(overrides or {})
        self.model_activation_stats = model_activation_stats
        self.bits_accum = bits_accum
        #: statistics read ahead of time (the app checks the file before training); None: read or collect later
        self.stats: Optional[Stats] = None

    @classmethod
    def build(cls, ctx: BuildContext, bits_activations: Optional[Bits] = 8, bits_parameters: Optional[Bits] = 8,
              bits_weights: Optional[Bits] = None, bits_accum: Annotated[int, Range(8, 64, integer=True)] = 32,
              mode: Union[str, Dict[str, str]] = "SYMMETRIC", per_channel_wts: bool = False,
              clip_acts: str = "NONE", clip_n_stds: Optional[Annotated[float, Range(0.0, 100.0)]] = None,
              clip_half_range: bool = False, overrides: Optional[Dict[str, Dict[str, Any]]] = None,
              model_activation_stats: Optional[str] = None, dynamic_acts: bool = False,
              scale_approx_mult_bits: Optional[Annotated[int, Range(2, 32, integer=True)]] = None,
              save_fp_weights: bool = False, inputs_quant_auto_fallback: bool = True) -> "PostTrainLinearQuantizer":
        """Check Distiller's arguments (each problem located at its key) and make the quantizer;
        ``dynamic_acts``: activation ranges from each batch itself (``--qe-dynamic``); ``scale_approx_mult_bits``:
        outputs requantized by an integer multiplier of that many bits and a shift (``--qe-scale-approx-bits``);
        ``save_fp_weights``: accepted, as the FP32 weights are always kept (``--qe-save-fp-weights``);
        ``inputs_quant_auto_fallback``: see the class docstring."""
        defaults = _linear_defaults(bits_activations, bits_parameters, bits_weights, mode, per_channel_wts,
                                    bits_activations)
        defaults.dynamic = bool(dynamic_acts)
        defaults.clip_acts = _clip(clip_acts, ("clip_acts",))
        if clip_n_stds is not None:
            defaults.clip_n_stds = float(clip_n_stds)
        defaults.clip_half_range = bool(clip_half_range)
        defaults.scale_approx_bits = scale_approx_mult_bits
        defaults.inputs_quant_auto_fallback = bool(inputs_quant_auto_fallback)
        _check_aciq_bits(defaults, ("clip_acts",))
        return cls(ctx.model, defaults, _rules(overrides, defaults), model_activation_stats, bits_accum, ctx.name)

    def settings_for(self, layer: str) -> LayerSettings:
        """The settings of ``layer``: the first override whose pattern matches its whole name, else the defaults."""
        for pattern, settings in self.overrides.items():
            if re.fullmatch(pattern, layer):
                return settings
        return self.defaults

    def quantize(self, model: Optional[nn.Module] = None, stats: Optional[Stats] = None) -> QuantizationSet:
        """Attach the simulated quantization to ``model`` (default: the schedule's), ranges from ``stats`` or the
        ``model_activation_stats`` file."""
        model = unwrap(model if model is not None else self.model)
        stats = stats if stats is not None else self.stats
        if stats is None:
            if self.model_activation_stats is None:
                raise ConfigError("post-training quantization needs activation statistics: give "
                                  "model_activation_stats (a stats file) or collect them (--qe-calibration)")
            stats = load_stats(self.model_activation_stats)
        qset = QuantizationSet({n: self.settings_for(n) for n, _ in quantizable_layers(model)}, self.name)
        qset.set_ranges(stats)
        return attach_quantization(model, qset)


def _linear_defaults(bits_activations: Optional[int], bits_parameters: Optional[int], bits_weights: Optional[int],
                     mode: Any, per_channel_wts: bool, bits_inputs: Optional[int]) -> LayerSettings:
    """The range-based quantizers' settings of every layer (``bits_weights`` wins over ``bits_parameters``)."""
    defaults = LayerSettings(bits_activations=bits_activations,
                             bits_weights=bits_weights if bits_weights is not None else bits_parameters,
                             bits_inputs=bits_inputs, per_channel_wts=bool(per_channel_wts))
    defaults.mode_activations, defaults.mode_weights = _modes(mode, ("mode",))
    return defaults


def _rules(overrides: Optional[Mapping[str, Any]], defaults: LayerSettings) -> Dict[str, LayerSettings]:
    """Each override's settings by its pattern (a regular expression), checked."""
    rules = {}
    for pattern, settings in (overrides or {}).items():
        try:
            re.compile(str(pattern))
        except re.error as err:
            raise ArgumentError(f"{pattern!r} is not a regular expression ({err})", ("overrides", pattern))
        rules[str(pattern)] = _override(settings, ("overrides", pattern), defaults)
    return rules


def _modes(mode: Any, path: Tuple[Any, ...]) -> Tuple[str, str]:
    """(activations mode, weights mode) from one name or ``{activations, weights}``."""
    if isinstance(mode, Mapping):
        unknown = [k for k in mode if k not in ("activations", "weights")]
        if unknown:
            raise ArgumentError(f"unknown key {unknown[0]!r}", (*path, unknown[0]), valid=["activations", "weights"])
        acts = _mode(mode.get("activations", "SYMMETRIC"), (*path, "activations"))
        return acts, _mode(mode.get("weights", "SYMMETRIC"), (*path, "weights"))
    one = _mode(mode, path)
    return one, one


def _mode(value: Any, path: Tuple[Any, ...]) -> str:
    names = [m.name for m in LinearQuantMode]
    if isinstance(value, str) and value.upper() in names:
        return value.upper()
    raise ArgumentError(f"{value!r} is not a quantization mode", path, valid=names,
                        suggestions=suggest(str(value).upper(), names))


def _clip(value: Any, path: Tuple[Any, ...]) -> str:
    names = [m.name for m in ClipMode]
    if isinstance(value, str) and value.upper() in names:
        return value.upper()
    raise ArgumentError(f"{value!r} is not a clip mode", path, valid=names,
                        suggestions=suggest(str(value).upper(), names))


def _check_aciq_bits(s: LayerSettings, path: Tuple[Any, ...]) -> None:
    """GAUSS and LAPLACE clipping (ACIQ) have tables for 1 to 8 bits of activations only."""
    low, high = ACIQ_BITS
    if s.clip_acts in ("GAUSS", "LAPLACE") and not all(low <= b <= high for b in (s.bits_activations,
                                                                                 s.bits_inputs) if b):
        raise ArgumentError(f"{s.clip_acts} clipping is defined for {low} to {high} bits of activations, got "
                            f"{max(b for b in (s.bits_activations, s.bits_inputs) if b)}", path)


def _bits(value: Any, path: Tuple[Any, ...]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 16:
        raise ArgumentError(f"bits must be an integer from 2 to 16 (or null: not quantized), got {value!r}", path)
    return value


def _override(raw: Any, path: Tuple[Any, ...], defaults: LayerSettings) -> LayerSettings:
    """One override's settings, on top of the defaults."""
    if not isinstance(raw, Mapping):
        raise ArgumentError("an override is a mapping of settings", path, valid=list(OVERRIDE_KEYS))
    s = LayerSettings(**defaults.to_config())
    inputs: List[Tuple[str, Any, Tuple[Any, ...]]] = []
    for key, value in raw.items():
        where = (*path, key)
        if key not in OVERRIDE_KEYS:
            raise ArgumentError(f"unknown key {key!r}", where, valid=list(OVERRIDE_KEYS),
                                suggestions=suggest(str(key), OVERRIDE_KEYS))
        if key == "bits_activations":
            s.bits_activations = s.bits_inputs = _bits(value, where)
        elif key in ("bits_weights", "bits_parameters"):
            s.bits_weights = _bits(value, where)
        elif key == "mode":
            s.mode_activations, s.mode_weights = _modes(value, where)
        elif key == "per_channel_wts":
            if not isinstance(value, bool):
                raise ArgumentError(f"must be true or false, got {value!r}", where)
            s.per_channel_wts = value
        elif key == "clip_acts":
            s.clip_acts = _clip(value, where)
        elif key == "clip_half_range":
            if not isinstance(value, bool):
                raise ArgumentError(f"must be true or false, got {value!r}", where)
            s.clip_half_range = value
        elif key == "clip_n_stds":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
                raise ArgumentError(f"must be a number in (0, 100], got {value!r}", where)
            s.clip_n_stds = float(value)
        elif key == "quantize_inputs":
            if not isinstance(value, bool):
                raise ArgumentError(f"must be true or false, got {value!r}", where)
        else:
            inputs.append((key, value, where))
    for key, value, where in inputs:  # after the output's settings, which the input's default to
        _input_settings(s, key, value, where)
    _check_aciq_bits(s, path)
    return s


def _input_settings(s: LayerSettings, key: str, value: Any, path: Tuple[Any, ...]) -> None:
    """Explicit settings of the layer's (only) input: Distiller's ``input_overrides`` (``{0: {from_output: true}}``,
    or any of ``INPUT_KEYS`` with the rest as the output's) or ``input_quantization_settings`` (``{0:
    {bits_activations: N}}``); as in Distiller, an explicit input takes no half range."""
    keys = INPUT_KEYS if key == "input_overrides" else ("bits_activations",)
    if not isinstance(value, Mapping) or not value:
        raise ArgumentError(f"input settings map an input index to its settings, e.g. {{0: {{{keys[0]}: ...}}}}",
                            path, valid=list(keys))
    for index, settings in value.items():
        where = (*path, index)
        if str(index) != "0":
            raise ArgumentError(f"convolutions and linear layers have one input (0), got {index!r}", where)
        if not isinstance(settings, Mapping):
            raise ArgumentError(f"an input's settings are a mapping, got {settings!r}", where, valid=list(keys))
        unknown = [k for k in settings if k not in keys]
        if unknown:
            raise ArgumentError(f"unknown key {unknown[0]!r}", (*where, unknown[0]), valid=list(keys),
                                suggestions=suggest(str(unknown[0]), keys))
        from_output = settings.get("from_output", False)
        if not isinstance(from_output, bool):
            raise ArgumentError(f"must be true or false, got {from_output!r}", (*where, "from_output"))
        s.input_explicit, s.input_clip_half_range = True, False
        s.input_mode = s.input_clip_acts = s.input_clip_n_stds = None
        s.bits_inputs = s.bits_activations
        if from_output:  # the output's settings; Distiller ignores the other keys then
            continue
        if "bits_activations" in settings:
            s.bits_inputs = _bits(settings["bits_activations"], (*where, "bits_activations"))
        if "mode" in settings:
            s.input_mode = _mode(settings["mode"], (*where, "mode"))
        if "clip_acts" in settings:
            s.input_clip_acts = _clip(settings["clip_acts"], (*where, "clip_acts"))
        if "clip_n_stds" in settings:
            n = settings["clip_n_stds"]
            if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n <= 100:
                raise ArgumentError(f"must be a number in (0, 100], got {n!r}", (*where, "clip_n_stds"))
            s.input_clip_n_stds = float(n)


@QUANTIZERS.register("QuantAwareTrainRangeLinearQuantizer")
class QuantAwareTrainRangeLinearQuantizer(Policy):
    """Quantization-aware training (Distiller's range-based linear QAT): from the policy's first epoch on, every
    convolution and linear layer trains with its input, weights and output fake-quantized (gradients straight
    through to the float weights), the activation ranges tracked by an exponential moving average of each
    batch's min and max (``ema_decay``). The model stays quantized after the window: ready for int8."""

    kind = "quantizer"
    needs_minibatch_hooks = False
    changes_masks_in_minibatches = False

    def __init__(self, model: nn.Module, qset: QuantizationSet, name: str = ""):
        super().__init__(name)
        self.model = model
        self.qset = qset

    @classmethod
    def build(cls, ctx: BuildContext, bits_activations: Optional[Bits] = 8, bits_parameters: Optional[Bits] = 8,
              bits_weights: Optional[Bits] = None, bits_accum: Annotated[int, Range(8, 64, integer=True)] = 32,
              mode: Union[str, Dict[str, str]] = "SYMMETRIC", per_channel_wts: bool = False,
              ema_decay: Annotated[float, Range(0.0, 1.0)] = 0.999, quantize_inputs: bool = True,
              num_bits_inputs: Optional[Bits] = None, overrides: Optional[Dict[str, Dict[str, Any]]] = None
              ) -> "QuantAwareTrainRangeLinearQuantizer":
        """Check the arguments and attach the (not yet active) fake quantization to the model."""
        if not 0.0 < ema_decay < 1.0:
            raise ArgumentError(f"ema_decay must be strictly between 0 and 1, got {ema_decay}", ("ema_decay",))
        inputs = (num_bits_inputs or bits_activations) if quantize_inputs else None
        defaults = _linear_defaults(bits_activations, bits_parameters, bits_weights, mode, per_channel_wts, inputs)
        rules = _rules(overrides, defaults)
        model = unwrap(ctx.model)

        def settings_for(layer: str) -> LayerSettings:
            return next((s for p, s in rules.items() if re.fullmatch(p, layer)), defaults)

        qset = QuantizationSet({n: settings_for(n) for n, _ in quantizable_layers(model)}, ctx.name, ema_decay)
        qset.active = False  # float until the policy's first epoch
        return cls(ctx.model, attach_quantization(model, qset), ctx.name)

    def on_epoch_begin(self, ctx: Any) -> None:
        """Train quantized from now on."""
        self.qset.active = True

    def trained_parameters(self) -> List[nn.Parameter]:
        """The quantization's learned values (PACT's clipping values) once it is on."""
        return list(self.qset.parameters()) if self.qset.active else []


def _research_bits(value: Optional[int], path: Tuple[Any, ...]) -> Optional[int]:
    """Distiller's convention for DoReFa / PACT: 32 bits (or null) means not quantized."""
    if value is None or value >= 32:
        return None
    return _bits(value, path)


class _ResearchQuantizer(Policy):
    """Shared by DoReFa and PACT: fake quantization of every convolution and linear layer from the policy's
    first epoch on (Distiller's defaults: 32 bits, i.e. not quantized, unless given)."""

    kind = "quantizer"
    needs_minibatch_hooks = False
    changes_masks_in_minibatches = False
    scheme = "dorefa"

    def __init__(self, model: nn.Module, qset: QuantizationSet, name: str = ""):
        super().__init__(name)
        self.model = model
        self.qset = qset

    @classmethod
    def _make(cls, ctx: BuildContext, bits_activations: Optional[int], bits_weights: Optional[int],
              bits_bias: Optional[int], overrides: Optional[Dict[str, Dict[str, Any]]],
              alpha: float = 8.0) -> "_ResearchQuantizer":
        if bits_bias is not None:
            raise ArgumentError("biases stay in float here (the accumulator's precision); drop bits_bias",
                                ("bits_bias",))
        defaults = LayerSettings(bits_activations=None, bits_inputs=_research_bits(bits_activations,
                                                                                 ("bits_activations",)),
                                 bits_weights=_research_bits(bits_weights, ("bits_weights",)), scheme=cls.scheme)
        rules = {}
        for pattern, settings in (overrides or {}).items():
            unknown = [k for k in dict(settings or {}) if k not in ("bits_activations", "bits_weights")]
            if unknown:
                raise ArgumentError(f"unknown key {unknown[0]!r}", ("overrides", pattern, unknown[0]),
                                    valid=["bits_activations", "bits_weights"])
            s = LayerSettings(**defaults.to_config())
            if "bits_activations" in settings:
                s.bits_inputs = _research_bits(settings["bits_activations"], ("overrides", pattern, "bits_activations"))
            if "bits_weights" in settings:
                s.bits_weights = _research_bits(settings["bits_weights"], ("overrides", pattern, "bits_weights"))
            rules[str(pattern)] = s
        model = unwrap(ctx.model)
        layers = {n: next((s for p, s in rules.items() if re.fullmatch(p, n)), defaults)
                  for n, _ in quantizable_layers(model)}
        qset = QuantizationSet(layers, ctx.name)
        with torch.no_grad():
            for p in qset.alphas.values():
                p.fill_(alpha)
        qset.active = False
        attach_quantization(model, qset)
        ctx.add_parameters(qset.parameters())  # PACT's clipping values learn with the network
        return cls(ctx.model, qset, ctx.name)

    def on_epoch_begin(self, ctx: Any) -> None:
        """Train quantized from now on."""
        self.qset.active = True

    def trained_parameters(self) -> List[nn.Parameter]:
        """The quantization's learned values (PACT's clipping values) once it is on."""
        return list(self.qset.parameters()) if self.qset.active else []


@QUANTIZERS.register("DorefaQuantizer")
class DorefaQuantizer(_ResearchQuantizer):
    """DoReFa-Net's quantization-aware training (Zhou et al., 2016): weights through tanh to [-1, 1] and
    quantized; each layer's input clamped to [0, 1] and quantized (the ReLU output it usually is)."""

    scheme = "dorefa"

    @classmethod
    def build(cls, ctx: BuildContext, bits_activations: Optional[int] = 32, bits_weights: Optional[int] = 32,
              bits_bias: Optional[int] = None, overrides: Optional[Dict[str, Dict[str, Any]]] = None
              ) -> "DorefaQuantizer":
        """Distiller's arguments."""
        return cls._make(ctx, bits_activations, bits_weights, bits_bias, overrides)  # type: ignore[return-value]


@QUANTIZERS.register("PACTQuantizer")
class PACTQuantizer(_ResearchQuantizer):
    """PACT (Choi et al., 2018): DoReFa's weights; each layer's input clipped to [0, alpha] with alpha learned
    per layer (``act_clip_init_val``; ``act_clip_decay`` its L2 weight decay) and quantized."""

    scheme = "pact"

    @classmethod
    def build(cls, ctx: BuildContext, bits_activations: Optional[int] = 32, bits_weights: Optional[int] = 32,
              bits_bias: Optional[int] = None, overrides: Optional[Dict[str, Dict[str, Any]]] = None,
              act_clip_init_val: Annotated[float, Range(0.0, 1000.0)] = 8.0,
              act_clip_decay: Optional[Annotated[float, Range(0.0, 1.0)]] = None) -> "PACTQuantizer":
        """Distiller's arguments."""
        if act_clip_init_val <= 0:
            raise ArgumentError(f"act_clip_init_val must be above 0, got {act_clip_init_val}", ("act_clip_init_val",))
        made = cls._make(ctx, bits_activations, bits_weights, bits_bias, overrides, act_clip_init_val)
        if act_clip_decay and ctx.optimizer is not None:
            alphas = {id(p) for p in made.qset.alphas.values()}
            for group in ctx.optimizer.param_groups:
                if any(id(p) in alphas for p in group["params"]):
                    group["weight_decay"] = float(act_clip_decay)
        return made  # type: ignore[return-value]
