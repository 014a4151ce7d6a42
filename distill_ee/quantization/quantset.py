"""QuantizationSet: simulated (fake) quantization of a model's convolutions and linear layers, names kept.

Attached as ``model.quantization`` (``distill_ee.attachment.attach``), the set holds every quantized layer's
settings and its activation ranges (buffers, saved with ``model.state_dict()``). Each quantized layer keeps its
parameters where they are (``conv1.weight`` stays ``conv1.weight``, so pruning masks, exits and schedules still
find them); only its ``forward`` goes through the set, which quantizes the layer's input, its weights (from the
current float weights, per output channel if asked) and its output, each to its bits and mode, and computes in
float in between (what integer kernels give, up to the accumulator's rounding). Pruned weights stay exactly
zero: both modes represent 0 exactly.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass
from typing import (Annotated, Any, ClassVar, ContextManager, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Tuple)

import torch
from torch import nn
from torch.nn import functional as F

from ..arguments import ArgumentError, Checked, Range, check_value
from ..attachment import Attachment, Handle, attach, attachment_of, detach, own_forward, register_attachment
from ..attachment import replace_forward
from ..errors import DistillEEError
from .linear import (ClipMode, LinearQuantMode, fake_quantize, integer_range, quant_params, stats_range,
                     tensor_range, weight_range)

#: the attribute of the user's model that holds its QuantizationSet
QUANT_ATTR = "quantization"
#: the kind of the structure step that attaches it
QUANT_STEP = "quantization"
QUANTIZABLE = (nn.Conv2d, nn.Linear)
#: how a layer's weights and input are quantized (``LayerSettings.scheme``)
SCHEMES = ("range", "dorefa", "pact")
#: the most layers a quantization step may name
MAX_LAYERS = 100_000
#: the attribute marking a tensor as a quantized activation (Distiller's ``quant_metadata``)
QUANTIZED_TAG = "_distill_ee_quantized"
#: leaf modules whose output is their input (quantized when it was); every other leaf module's output counts
#: as quantized, as Distiller fake-quantizes it (or folds it into the layer before)
PASS_THROUGH = (nn.Dropout, nn.Identity)


def stats_problem(stats: Mapping[str, Any], layers: Iterable[str],
                  settings: Optional[Mapping[str, "LayerSettings"]] = None) -> Optional[str]:
    """What ``stats`` lacks for quantizing ``layers`` (a layer, its first input, or the ``b`` that LAPLACE
    clipping reads when ``settings`` ask for it), or None."""
    for name in layers:
        if name not in stats:
            return f"no statistics for layer {name!r}"
        inputs = stats[name].get("inputs") or {}
        first = inputs.get(0, inputs.get("0"))
        if first is None:
            return f"no statistics for the input of layer {name!r}"
        s = (settings or {}).get(name)
        if s is not None and s.clip_acts == ClipMode.LAPLACE.name and not s.dynamic and not all(
                "b" in entry for entry in (first, stats[name]["output"])):
            return (f"no `b` (mean absolute deviation) for layer {name!r}, which LAPLACE clipping needs (files "
                    "collected here or by Distiller have it)")
    return None


@dataclass
class LayerSettings:
    """How one layer is quantized (Distiller's arguments, after overrides)."""

    bits_activations: Optional[int] = 8
    bits_weights: Optional[int] = 8
    bits_inputs: Optional[int] = 8
    mode_activations: str = "SYMMETRIC"
    mode_weights: str = "SYMMETRIC"
    per_channel_wts: bool = False
    clip_acts: str = "NONE"
    clip_n_stds: float = 3.0
    #: the activations are known non-negative (ACIQ's clipping of an asymmetric range takes the half-range alpha)
    clip_half_range: bool = False
    #: ``range`` (range-based linear), ``dorefa`` or ``pact`` (Zhou et al., 2016; Choi et al., 2018): weights
    #: through tanh to [-1, 1]; the layer's input clamped to [0, 1] (DoReFa) or to [0, alpha] with alpha learned
    #: (PACT); the output not quantized (it is the next layer's input)
    scheme: str = "range"
    #: activation ranges taken from each batch itself (Distiller's --qe-dynamic), not from statistics
    dynamic: bool = False
    #: Distiller's ``scale_approx_mult_bits``: the output is requantized from the accumulator with an integer
    #: multiplier of this many bits and a right shift instead of a float scale (None: the float scale)
    scale_approx_bits: Optional[int] = None
    #: the input's own settings (Distiller's ``input_overrides``), each None where it is the output's
    input_mode: Optional[str] = None
    input_clip_acts: Optional[str] = None
    input_clip_n_stds: Optional[float] = None
    input_clip_half_range: Optional[bool] = None
    #: the input has explicit settings (``input_overrides`` or ``input_quantization_settings``)
    input_explicit: bool = False
    #: Distiller's ``inputs_quant_auto_fallback``: an input that arrives unquantized and has no explicit settings
    #: is quantized by the output's settings (True) or refused when the layer runs (False)
    inputs_quant_auto_fallback: bool = True

    def to_config(self) -> Dict[str, Any]:
        """Plain values."""
        return asdict(self)

    def input_quant(self) -> Tuple[str, str, float, bool]:
        """(mode, clip mode, clip_n_stds, clip_half_range) of the layer's input."""
        return (self.input_mode or self.mode_activations, self.input_clip_acts or self.clip_acts,
                self.clip_n_stds if self.input_clip_n_stds is None else self.input_clip_n_stds,
                self.clip_half_range if self.input_clip_half_range is None else self.input_clip_half_range)


RANGE_NAMES = ("in_low", "in_high", "out_low", "out_high")


class _Ranges(nn.Module):
    """One layer's activation ranges (input and output), as buffers; with EMA tracking, also the biased
    averages and the number of batches seen."""

    def __init__(self) -> None:
        super().__init__()
        for name in RANGE_NAMES:
            self.register_buffer(name, torch.zeros(()))
            self.register_buffer(f"{name}_biased", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def track(self, x: torch.Tensor, out: bool, decay: float) -> None:
        """Move the input's (or output's) range towards this batch's min and max, bias-corrected (Distiller's
        EMA: ``biased = decay * biased + (1 - decay) * value``, ``range = biased / (1 - decay^steps)``)."""
        low_name, high_name = ("out_low", "out_high") if out else ("in_low", "in_high")
        if not out:
            self.steps += 1
        correction = 1.0 - decay ** int(self.steps)
        for name, value in ((low_name, x.detach().min()), (high_name, x.detach().max())):
            biased = getattr(self, f"{name}_biased")
            biased.mul_(decay).add_((1.0 - decay) * value)
            getattr(self, name).copy_(biased / correction)


def _layer_settings(value: Any) -> Dict[str, Any]:
    """A quantization step's layers: name -> settings, each of LayerSettings' fields and types, modes known."""
    if not isinstance(value, dict) or not value or len(value) > MAX_LAYERS:
        raise ArgumentError(f"`layers` maps 1 to {MAX_LAYERS:,} layer names to their settings")
    for name, settings in value.items():
        try:
            s = check_value(LayerSettings, settings)
            for field, names in (("mode_activations", LinearQuantMode), ("mode_weights", LinearQuantMode),
                                 ("clip_acts", ClipMode), ("input_mode", LinearQuantMode),
                                 ("input_clip_acts", ClipMode)):
                if getattr(s, field) is not None and getattr(s, field) not in names.__members__:
                    raise ArgumentError(f"unknown {field} {getattr(s, field)!r}", (field,),
                                        valid=list(names.__members__))
            if s.scheme not in SCHEMES:
                raise ArgumentError(f"unknown scheme {s.scheme!r}", ("scheme",), valid=list(SCHEMES))
        except ArgumentError as err:
            raise err.under(name) from None
    return value


@dataclass
class QuantizationStepFields:
    """What a ``quantization`` structure step holds besides its kind and name."""

    owner: ClassVar[str] = "a quantization step"
    layers: Annotated[Dict[str, Any], Checked("layer name -> settings", _layer_settings)]
    ema_decay: Optional[Annotated[float, Range(0.0, 1.0, low_open=True, high_open=True)]] = None


@register_attachment
class QuantizationSet(Attachment):
    """The quantized layers of a model by name, their settings and activation ranges."""

    kind = QUANT_STEP
    attribute = QUANT_ATTR
    noun = "quantization"
    trained_by_policies = True
    step_schema = QuantizationStepFields

    def __init__(self, settings: Mapping[str, LayerSettings], instance_name: str = "",
                 ema_decay: Optional[float] = None):
        super().__init__()
        self.settings: Dict[str, LayerSettings] = dict(settings)
        self.ranges = nn.ModuleDict({_key(n): _Ranges() for n in self.settings})
        #: PACT's learned clipping value of each layer's input (Distiller's initial value: 8)
        self.alphas = nn.ParameterDict({_key(n): nn.Parameter(torch.tensor(8.0)) for n, s in self.settings.items()
                                        if s.scheme == "pact"})
        self.instance_name = instance_name
        #: quantization-aware training: activation ranges tracked by EMA in training mode (None: fixed ranges)
        self.ema_decay = ema_decay
        self.active = True

    # ----------------------------------------------------------------- the attachment protocol
    def install(self, model: nn.Module) -> List[Handle]:
        """Every quantized layer's forward through ``run``."""
        modules = dict(model.named_modules())
        for name in self.layers:
            if not isinstance(modules.get(name), QUANTIZABLE):
                raise DistillEEError(f"{name!r} is not a convolution or linear layer of the model")
        handles: List[Handle] = [replace_forward(modules[name], functools.partial(
            self.run, name, modules[name], own_forward(modules[name]))) for name in self.layers]
        if any(not s.inputs_quant_auto_fallback for s in self.settings.values()):
            own = {id(m) for m in self.modules()}
            handles += [m.register_forward_hook(self._mark) for n, m in modules.items()
                        if n not in self.settings and id(m) not in own and not any(True for _ in m.children())]
        return handles

    def _mark(self, module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
        """Mark a leaf module's output as quantized, as Distiller's fake quantization of it leaves it (a
        pass-through module's output only when its input was)."""
        if not self.active or not isinstance(output, torch.Tensor):
            return
        if not isinstance(module, PASS_THROUGH) or any(getattr(x, QUANTIZED_TAG, False) for x in inputs):
            _tagged(output)

    def step_config(self) -> Dict[str, Any]:
        """The EMA decay and every layer's settings."""
        return {"ema_decay": self.ema_decay, "layers": {n: s.to_config() for n, s in self.settings.items()}}

    @classmethod
    def from_step(cls, model: nn.Module, step: Mapping[str, Any]) -> "QuantizationSet":
        """The quantization of a saved step (its ranges come with the checkpoint's weights)."""
        settings = {str(n): LayerSettings(**dict(s)) for n, s in dict(step["layers"]).items()}
        decay = step.get("ema_decay")
        return cls(settings, str(step.get("name", "")), None if decay is None else float(decay))

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """The layers in float for the length of the block."""
        was, self.active = self.active, False
        try:
            yield
        finally:
            self.active = was

    def exported(self) -> ContextManager[None]:
        """Float while the graph is exported: int8 comes from the runtime's own kernels."""
        return self.suspended()

    def get_extra_state(self) -> Dict[str, Any]:
        """Whether the quantization is on (saved with the model)."""
        return {"active": bool(self.active)}

    def set_extra_state(self, state: Any) -> None:
        """Restore ``get_extra_state``'s value."""
        if isinstance(state, dict) and "active" in state:
            self.active = bool(state["active"])

    @property
    def layers(self) -> List[str]:
        """Quantized layer names."""
        return list(self.settings)

    # ----------------------------------------------------------------- ranges
    def set_ranges(self, stats: Mapping[str, Any]) -> None:
        """Activation ranges of every layer from statistics (``stats.collect_stats`` / a stats file)."""
        problem = stats_problem(stats, self.settings, self.settings)
        if problem:
            raise DistillEEError(f"the activation statistics have {problem} (they must come from the same model)")
        for name, s in self.settings.items():
            inputs = stats[name].get("inputs") or {}
            r = self.ranges[_key(name)]
            output = (s.mode_activations, s.clip_acts, s.clip_n_stds, s.clip_half_range)
            for entry, bits, (mode, clip, n_stds, half), (low_name, high_name) in (
                    (inputs.get(0, inputs.get("0")), s.bits_inputs, s.input_quant(), ("in_low", "in_high")),
                    (stats[name]["output"], s.bits_activations, output, ("out_low", "out_high"))):
                low, high = stats_range(entry, ClipMode[clip], n_stds, bits or 8, LinearQuantMode[mode], half)
                getattr(r, low_name).fill_(low)
                getattr(r, high_name).fill_(high)

    # ----------------------------------------------------------------- forward
    def run(self, name: str, module: nn.Module, original: Any, x: torch.Tensor) -> torch.Tensor:
        """The layer ``name`` with its input, weights and output quantized (the float layer when inactive)."""
        if not self.active:
            return original(x)
        s, r = self.settings[name], self.ranges[_key(name)]
        if s.scheme != "range":
            return self._learned(name, s, module, x)
        tracking = self.training and self.ema_decay is not None
        if tracking:
            r.track(x, out=False, decay=self.ema_decay)
        in_scale = w_scale = None
        if s.bits_inputs:
            if not (s.inputs_quant_auto_fallback or s.input_explicit or getattr(x, QUANTIZED_TAG, False)):
                raise DistillEEError(
                    f"layer {name!r}: its input arrives unquantized (the model's input, a layer not quantized or "
                    "an operation of the forward code such as a view) and inputs_quant_auto_fallback is false: "
                    f"give it input_overrides in the quantizer's overrides (e.g. {name}: {{input_overrides: "
                    "{0: {from_output: true}}}) or set inputs_quant_auto_fallback: true")
            in_mode = s.input_quant()[0]
            low, high = _dynamic_input_range(x, s) if s.dynamic else (r.in_low, r.in_high)
            if s.scale_approx_bits:
                in_scale = _scale(x, low, high, s.bits_inputs, in_mode)
            x = _fake(x, low, high, s.bits_inputs, in_mode)
        weight = module.weight
        if s.bits_weights:
            low, high = weight_range(weight.detach(), s.per_channel_wts)
            if s.scale_approx_bits:
                w_scale = _scale(weight, low, high, s.bits_weights, s.mode_weights)
            weight = _fake(weight, low, high, s.bits_weights, s.mode_weights)
        if isinstance(module, nn.Conv2d):
            out = module._conv_forward(x, weight, module.bias)
        else:
            out = F.linear(x, weight, module.bias)
        if tracking:
            r.track(out, out=True, decay=self.ema_decay)
        if s.bits_activations:
            low, high = _dynamic_range(out, s, s.bits_activations) if s.dynamic else (r.out_low, r.out_high)
            if s.scale_approx_bits and in_scale is not None and w_scale is not None:
                channel_dim = 1 if isinstance(module, nn.Conv2d) else out.dim() - 1
                return _tagged(approx_requantize(out, in_scale * w_scale.reshape(-1), low, high, s, channel_dim))
            out = _tagged(_fake(out, low, high, s.bits_activations, s.mode_activations))
        return out

    def _learned(self, name: str, s: LayerSettings, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """DoReFa / PACT: input clamped to [0, 1] or [0, alpha] and quantized unsigned; weights through tanh."""
        if s.bits_inputs:
            if s.scheme == "pact":
                x = pact_quantize(x, self.alphas[_key(name)], s.bits_inputs)
            else:
                x = unit_quantize(torch.clamp(x, 0.0, 1.0), s.bits_inputs)
        weight = dorefa_weights(module.weight, s.bits_weights) if s.bits_weights else module.weight
        if isinstance(module, nn.Conv2d):
            return module._conv_forward(x, weight, module.bias)
        return F.linear(x, weight, module.bias)


class _RoundSTE(torch.autograd.Function):
    """Rounding with a straight-through gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def unit_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's ``quantize_k`` of values in [0, 1]: ``round((2^k - 1) x) / (2^k - 1)``, gradient straight through."""
    n = 2 ** bits - 1
    return _RoundSTE.apply(x * n) / n


def dorefa_weights(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's weights (Zhou et al., 2016, eq. 9): ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``."""
    t = torch.tanh(weight)
    return 2 * unit_quantize(t / (2 * t.detach().abs().max().clamp_min(1e-12)) + 0.5, bits) - 1


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT (Choi et al., 2018): ``clamp(x, 0, alpha)`` quantized to ``bits`` on [0, alpha]; alpha learns from
    the samples it clips (d/d alpha = 1 where x >= alpha), the rest straight through."""
    clipped = torch.clamp(x, min=0.0)
    clipped = torch.where(clipped < alpha, clipped, alpha.expand_as(clipped))
    n = 2 ** bits - 1
    scale = n / alpha.detach()
    return _RoundSTE.apply(clipped * scale) / scale


def _key(name: str) -> str:
    return name.replace(".", "__")


def _dynamic_range(x: torch.Tensor, s: LayerSettings, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The range of an activation taken from the batch itself, by the layer's clip mode."""
    return tensor_range(x, ClipMode[s.clip_acts], s.clip_n_stds, bits, LinearQuantMode[s.mode_activations],
                        s.clip_half_range)


def _dynamic_input_range(x: torch.Tensor, s: LayerSettings) -> Tuple[torch.Tensor, torch.Tensor]:
    """The range of a layer's input taken from the batch itself, by its input settings (as Distiller's dynamic
    input quantization, without a half range)."""
    mode, clip, n_stds, _ = s.input_quant()
    return tensor_range(x, ClipMode[clip], n_stds, s.bits_inputs or 8, LinearQuantMode[mode], False)


def _tagged(x: torch.Tensor) -> torch.Tensor:
    """``x`` marked as a quantized activation (what Distiller's quantization metadata on a tensor says)."""
    setattr(x, QUANTIZED_TAG, True)
    return x


def _fake(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bits: int, mode: str) -> torch.Tensor:
    m = LinearQuantMode[mode]
    scale, zero_point = quant_params(low.to(x.device), high.to(x.device), bits, m)
    return fake_quantize(x, scale, zero_point, bits, m)


def _scale(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bits: int, mode: str) -> torch.Tensor:
    """The quantization scale of the range [low, high] (one per channel for per-channel weights)."""
    return quant_params(low.to(x.device), high.to(x.device), bits, LinearQuantMode[mode])[0]


def approx_scale(scale: torch.Tensor, mult_bits: int) -> torch.Tensor:
    """``scale`` as Distiller's ``approx_scale_as_mult_and_shift`` gives it: ``mult / 2^shift`` with ``mult`` an
    integer of ``mult_bits`` bits and ``shift = floor(log2((2^mult_bits - 1) / scale))``."""
    shift = torch.floor(torch.log2((2 ** mult_bits - 1) / scale))
    return torch.floor(scale * 2 ** shift) / 2 ** shift


def approx_requantize(out: torch.Tensor, accum_scale: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                      s: LayerSettings, channel_dim: int) -> torch.Tensor:
    """The layer's output requantized from its accumulator (scale ``accum_scale``, one per output channel or
    one) by the integer multiplier and shift approximating ``out_scale / accum_scale``, then dequantized."""
    mode = LinearQuantMode[s.mode_activations]
    bits = int(s.bits_activations or 8)
    out_scale, zero_point = quant_params(low.to(out.device), high.to(out.device), bits, mode)
    effective = accum_scale * approx_scale(out_scale / accum_scale, int(s.scale_approx_bits or 0))
    if effective.numel() > 1:
        shape = [1] * out.dim()
        shape[channel_dim] = -1
        effective = effective.reshape(shape)
    lowest, highest = integer_range(bits, mode)
    q = torch.clamp(torch.round(effective * out - zero_point), lowest, highest)
    return (q + zero_point) / out_scale


def quantization_of(model: nn.Module) -> Optional[QuantizationSet]:
    """The model's QuantizationSet (None when it has none)."""
    return attachment_of(model, QuantizationSet)


def attach_quantization(model: nn.Module, qset: QuantizationSet) -> QuantizationSet:
    """Attach ``qset`` as ``model.quantization``: its layers' forward routed through it, the step recorded."""
    return attach(model, qset)


def detach_quantization(model: nn.Module) -> Optional[QuantizationSet]:
    """Remove the quantization; the layers run in float again."""
    return detach(model, QuantizationSet)


def quantizable_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every convolution and linear layer of the model, exit branches included (they run at
    inference too)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
