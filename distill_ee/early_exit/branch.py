"""Exit branches: layer lists from a schedule turned into modules, input sizes inferred from real shapes.

A branch is written as a list of layers (``relu`` or ``{type: conv, out_channels: 16, kernel_size: 3}``).
Each layer type is a builder registered in BRANCH_LAYERS; a builder receives the shape of the tensor it will
consume (batch first) and its options, and returns the torch layer. Builders reject inputs they cannot take
(a conv on a flat tensor, a linear on an image) with a message the schedule error carries.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..arguments import ArgumentError, Meaning, Range, check_value, signature_of
from ..errors import ScheduleError
from ..modules import first_line
from ..registry import BRANCH_LAYERS, UnknownNameError, suggest
from .token_layers import ChannelsFirst, TokenAt, TokenMean

Shape = Tuple[int, ...]
#: a positive size (channels, kernel, stride, output size) within reason
Dim = Annotated[int, Range(1, 65536, integer=True)]
#: a token's position in a sequence (negative counts from the end)
TokenIndex = Annotated[int, Range(-65536, 65535, integer=True)]
#: a padding
Pad = Annotated[int, Range(0, 65536, integer=True)]
#: an option that is one size or a pair (kernel sizes, strides, output sizes)
Size2 = Union[Dim, Tuple[Dim, Dim]]
Pad2 = Union[Pad, Tuple[Pad, Pad]]
#: most parameters one branch layer may hold, and most values it may output per sample (checked before
#: anything is allocated: a typo in out_channels must not take the machine's memory)
MAX_LAYER_PARAMETERS = 1 << 26
MAX_LAYER_OUTPUTS = 1 << 24


class BranchShapeError(ValueError):
    """A layer cannot take the tensor that reaches it."""


@dataclass
class LayerSpec:
    """One branch layer as written in the schedule: a registered type and its options."""

    type: str
    options: Dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> Any:
        """Plain-python form (a bare string when there are no options)."""
        return {"type": self.type, **self.options} if self.options else self.type


# --------------------------------------------------------------------------- option parsing
def layer_options(layer_type: str) -> Dict[str, inspect.Parameter]:
    """The options a registered layer type accepts, by name."""
    params = inspect.signature(BRANCH_LAYERS.get(layer_type)).parameters
    return {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def parse_layer(raw: Any) -> LayerSpec:
    """A LayerSpec from a schedule entry (string or mapping with ``type``); ArgumentError (path relative to the
    entry) on bad input."""
    if isinstance(raw, str):
        layer_type, options = raw, {}
    elif isinstance(raw, Mapping):
        if "type" not in raw:
            raise ArgumentError("a branch layer needs a `type`", valid=BRANCH_LAYERS.names())
        layer_type, options = raw["type"], {k: v for k, v in raw.items() if k != "type"}
    else:
        raise ArgumentError(f"a branch layer is a type name or a mapping with `type`, got {raw!r}")
    if not isinstance(layer_type, str):
        raise ArgumentError(f"layer type must be a name, got {layer_type!r}", ("type",), valid=BRANCH_LAYERS.names())
    try:
        canonical = BRANCH_LAYERS.canonical(layer_type)
    except UnknownNameError as err:
        raise ArgumentError(f"unknown branch layer type {layer_type!r}", valid=err.valid,
                            suggestions=err.suggestions) from None
    return LayerSpec(canonical, _check_options(canonical, options))


def _check_options(layer_type: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    accepted = layer_options(layer_type)
    hints = signature_of(BRANCH_LAYERS.get(layer_type)).hints
    out: Dict[str, Any] = {}
    for key, value in options.items():
        if key not in accepted:
            raise ArgumentError(f"{layer_type} has no option {key!r}", (key,), valid=sorted(accepted),
                                suggestions=suggest(str(key), accepted))
        try:
            out[key] = check_value(hints.get(key, Any), value)
        except ArgumentError as err:
            raise err.under(key) from None
    for key, param in accepted.items():
        if param.default is inspect.Parameter.empty and key not in out:
            raise ArgumentError(f"{layer_type} needs `{key}`")
    return out


@dataclass(frozen=True)
class LayerList(Meaning):
    """A non-empty list of branch layers (``relu`` or ``{type: conv, out_channels: 8}``), each checked."""

    what: str = "a branch"
    checks_type = True

    def describe(self) -> str:
        """``a non-empty list of layers``."""
        return "a non-empty list of layers"

    def convert(self, value: Any, names: Any) -> List[LayerSpec]:
        """The LayerSpecs of the list."""
        if not isinstance(value, (list, tuple)) or not value:
            raise ArgumentError(f"{self.what} is a non-empty list of layers, got {value!r}")
        out = []
        for i, layer in enumerate(value):
            try:
                out.append(parse_layer(layer))
            except ArgumentError as err:
                raise err.under(i) from None
        return out


#: a branch, as a schedule writes it
Layers = Annotated[List[LayerSpec], LayerList()]


# --------------------------------------------------------------------------- layer builders
def _need_rank(in_shape: Shape, rank: int, what: str) -> None:
    if len(in_shape) != rank:
        raise BranchShapeError(f"needs {what}, but its input has shape {format_shape(in_shape)}")


_IMAGE = "an image-shaped input (N, C, H, W)"
_FLAT = "a flat input (N, features); put `flatten` (or `adaptive_avgpool` then `flatten`) before it"
_TOKENS_HINT = "; a token sequence (N, T, D) takes `cls_token` or `token_mean` first"
_CHANNEL_LAST_HINT = ("; channel-last features (N, H, W, C), as Swin's, take `token_mean` first (or "
                      "`channels_first` before image layers)")


def _hint(in_shape: Shape) -> str:
    """What a transformer's output takes first: a sequence, or (N, H, W, C) that looks channel-last (H == W != C)."""
    if len(in_shape) == 3:
        return _TOKENS_HINT
    if len(in_shape) == 4 and in_shape[1] == in_shape[2] != in_shape[3]:
        return _CHANNEL_LAST_HINT
    return ""


def _need_image(in_shape: Shape) -> None:
    """BranchShapeError unless (N, C, H, W); a token sequence is told what to put first."""
    if len(in_shape) != 4:
        raise BranchShapeError(f"needs {_IMAGE}, but its input has shape {format_shape(in_shape)}{_hint(in_shape)}")


def _need_flat(in_shape: Shape) -> None:
    """BranchShapeError unless (N, features); a sequence or channel-last features are told what to put first."""
    if len(in_shape) != 2:
        raise BranchShapeError(f"needs {_FLAT}, but its input has shape {format_shape(in_shape)}{_hint(in_shape)}")


@BRANCH_LAYERS.register("conv", aliases=("conv2d",))
def conv(in_shape: Shape, *, out_channels: Dim, kernel_size: Size2 = 3, stride: Size2 = 1,
         padding: Pad2 = 0, dilation: Size2 = 1, groups: Dim = 1, bias: bool = True) -> nn.Module:
    """2-D convolution; ``in_channels`` is the input's channel count."""
    _need_image(in_shape)
    return nn.Conv2d(in_shape[1], out_channels, kernel_size, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, bias=bias)


@BRANCH_LAYERS.register("bn", aliases=("batchnorm",))
def bn(in_shape: Shape, *, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    """Batch norm over channels (2-D input) or features (flat input)."""
    if len(in_shape) == 4:
        return nn.BatchNorm2d(in_shape[1], eps=eps, momentum=momentum)
    if len(in_shape) != 2:
        raise BranchShapeError("needs an image (N, C, H, W) or flat (N, features) input, but its input has shape "
                               f"{format_shape(in_shape)}{_hint(in_shape)}")
    return nn.BatchNorm1d(in_shape[1], eps=eps, momentum=momentum)


@BRANCH_LAYERS.register("relu")
def relu(in_shape: Shape) -> nn.Module:
    """ReLU (never in place: the branch input is the backbone's own activation)."""
    return nn.ReLU()


@BRANCH_LAYERS.register("maxpool", aliases=("max_pool",))
def maxpool(in_shape: Shape, *, kernel_size: Size2 = 2, stride: Optional[Dim] = None,
            padding: Pad2 = 0) -> nn.Module:
    """2-D max pooling (stride defaults to the kernel size)."""
    _need_image(in_shape)
    return nn.MaxPool2d(kernel_size, stride=stride, padding=padding)


@BRANCH_LAYERS.register("avgpool", aliases=("avg_pool",))
def avgpool(in_shape: Shape, *, kernel_size: Size2 = 2, stride: Optional[Dim] = None,
            padding: Pad2 = 0) -> nn.Module:
    """2-D average pooling (stride defaults to the kernel size)."""
    _need_image(in_shape)
    return nn.AvgPool2d(kernel_size, stride=stride, padding=padding)


@BRANCH_LAYERS.register("adaptive_avgpool", aliases=("adaptive_avg_pool", "global_avgpool"))
def adaptive_avgpool(in_shape: Shape, *, output_size: Size2 = 1) -> nn.Module:
    """2-D adaptive average pooling to ``output_size``."""
    _need_image(in_shape)
    return nn.AdaptiveAvgPool2d(output_size)


@BRANCH_LAYERS.register("flatten")
def flatten(in_shape: Shape) -> nn.Module:
    """Flatten everything but the batch dimension."""
    return nn.Flatten(1)


@BRANCH_LAYERS.register("linear", aliases=("fc",))
def linear(in_shape: Shape, *, out_features: Optional[Dim] = None, bias: bool = True) -> nn.Module:
    """Fully connected layer; ``in_features`` inferred; ``out_features`` defaults to the class count on the
    branch's last linear."""
    _need_flat(in_shape)
    if out_features is None:
        raise BranchShapeError("needs `out_features` (only the branch's last linear defaults to the class count)")
    return nn.Linear(in_shape[1], out_features, bias=bias)


@BRANCH_LAYERS.register("dropout")
def dropout(in_shape: Shape, *, p: float = 0.5) -> nn.Module:
    """Dropout with probability ``p``."""
    if not 0.0 <= p < 1.0:
        raise BranchShapeError(f"needs 0 <= p < 1, got {p}")
    return nn.Dropout(p)


@BRANCH_LAYERS.register("layernorm", aliases=("layer_norm",))
def layernorm(in_shape: Shape, *, eps: float = 1e-5) -> nn.Module:
    """Layer norm over the last dimension (features of each token, or channels of channel-last features)."""
    if len(in_shape) < 2:
        raise BranchShapeError(f"needs features in its last dimension, but its input has shape "
                               f"{format_shape(in_shape)}")
    return nn.LayerNorm(in_shape[-1], eps=eps)


@BRANCH_LAYERS.register("cls_token")
def cls_token(in_shape: Shape, *, index: TokenIndex = 0) -> nn.Module:
    """Token ``index`` of a sequence, (N, T, D) -> (N, D): ViT's class token is token 0."""
    _need_rank(in_shape, 3, "a token sequence (N, T, D)")
    if not -in_shape[1] <= index < in_shape[1]:
        raise BranchShapeError(f"has no token {index}: its input {format_shape(in_shape)} has {in_shape[1]} "
                               f"tokens (0 to {in_shape[1] - 1}, or negative from the end)")
    return TokenAt(index)


@BRANCH_LAYERS.register("token_mean")
def token_mean(in_shape: Shape) -> nn.Module:
    """Mean over the tokens, (N, T, D) -> (N, D), or over the positions of channel-last features, (N, H, W, C)
    -> (N, C) (Swin); channel-first images take ``adaptive_avgpool``."""
    if len(in_shape) not in (3, 4):
        raise BranchShapeError(f"needs a token sequence (N, T, D) or channel-last features (N, H, W, C), but its "
                               f"input has shape {format_shape(in_shape)}")
    return TokenMean(tuple(range(1, len(in_shape) - 1)))


@BRANCH_LAYERS.register("channels_first")
def channels_first(in_shape: Shape) -> nn.Module:
    """Channel-last features to channel-first, (N, H, W, C) -> (N, C, H, W), so image layers can follow."""
    _need_rank(in_shape, 4, "channel-last features (N, H, W, C)")
    return ChannelsFirst()


# --------------------------------------------------------------------------- branch assembly
def format_shape(shape: Sequence[int]) -> str:
    """``(N, 16, 8, 8)``: a shape with the batch dimension written as N."""
    return "(" + ", ".join(["N", *(str(s) for s in shape[1:])]) + ")"


def build_branch(layers: Sequence[LayerSpec], example: torch.Tensor, num_classes: int, *,
                 exit_name: str, path: str, role: str = "branch") -> nn.Sequential:
    """An nn.Sequential of ``layers`` fed by tensors like ``example``, ending in (N, num_classes) logits.

    Sizes are inferred by running ``example`` through each layer as it is built (in eval mode, no grad).
    ``path`` is the YAML path of the branch list, used in ScheduleErrors; ``role`` names what is built
    (``branch``, or a decider ``head`` ending in one value).
    """
    last_linear = max((i for i, l in enumerate(layers) if l.type == "linear"), default=-1)
    modules: List[nn.Module] = []
    x = example
    with torch.no_grad():
        for i, spec in enumerate(layers):
            options = dict(spec.options)
            if i == last_linear and options.get("out_features") is None:
                options["out_features"] = num_classes
            _check_size(spec.type, options, x, exit_name, i, f"{path}[{i}]")
            layer = _build_layer(spec.type, options, x, exit_name, i, f"{path}[{i}]")
            layer.to(device=example.device)
            layer.eval()
            x = _run_layer(layer, x, spec.type, exit_name, i, f"{path}[{i}]")
            modules.append(layer)
    if x.dim() != 2 or x.shape[1] != num_classes:
        must = (f"an exit must give (N, {num_classes}) logits; end it with `flatten` and `linear`"
                if role == "branch" else f"a {role} must give (N, {num_classes}); end it with `linear` (its "
                "last `linear` gives that many outputs unless told otherwise)")
        raise ScheduleError(f"exit {exit_name!r}: the {role} ends with shape {format_shape(x.shape)}, but {must}",
                            path=path)
    return nn.Sequential(*modules).train()  # built in eval mode to infer sizes; handed on as any new module is


def _check_size(layer_type: str, options: Dict[str, Any], x: torch.Tensor, exit_name: str, index: int,
                path: str) -> None:
    """Build the layer on the meta device (nothing allocated) and refuse one that is absurdly large."""
    with torch.device("meta"):
        layer = _build_layer(layer_type, options, x, exit_name, index, path)
    params = sum(p.numel() for p in layer.parameters())
    where = f"exit {exit_name!r}: layer {index} ({layer_type})"
    if params > MAX_LAYER_PARAMETERS:
        raise ScheduleError(f"{where} would hold {params:,} parameters, more than {MAX_LAYER_PARAMETERS:,}; "
                            "check its sizes", path=path)
    out = _run_layer(layer, x.to("meta"), layer_type, exit_name, index, path)
    per_sample = out[0].numel() if out.dim() else 1
    if per_sample > MAX_LAYER_OUTPUTS:
        raise ScheduleError(f"{where} would output {per_sample:,} values per sample, more than "
                            f"{MAX_LAYER_OUTPUTS:,}; check its sizes", path=path)
    if out.numel() == 0 or 0 in out.shape:
        raise ScheduleError(f"{where} gives an empty output of shape {format_shape(out.shape)}", path=path)


def _build_layer(layer_type: str, options: Dict[str, Any], x: torch.Tensor, exit_name: str, index: int,
                 path: str) -> nn.Module:
    builder: Callable[..., nn.Module] = BRANCH_LAYERS.get(layer_type)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        return builder(tuple(x.shape), **args)
    except (BranchShapeError, ValueError, TypeError, OverflowError, RuntimeError) as err:
        raise ScheduleError(f"exit {exit_name!r}: layer {index} ({layer_type}) {first_line(err)}",
                            path=path) from None


def _run_layer(layer: nn.Module, x: torch.Tensor, layer_type: str, exit_name: str, index: int,
               path: str) -> torch.Tensor:
    try:
        return layer(x)
    except (RuntimeError, ValueError, OverflowError) as err:
        raise ScheduleError(f"exit {exit_name!r}: layer {index} ({layer_type}) cannot take an input of shape "
                            f"{format_shape(x.shape)}: {first_line(err)}", path=path) from None
