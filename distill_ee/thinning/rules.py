"""How thinning treats each layer and operation of a traced model, and the channel layouts it tracks.

Roles: a *weighted* layer (convolution, linear) reads channels through its input dimension and creates new ones
through its filters; a *per-channel* layer (batch norm, depthwise convolution) keeps channels apart, one set of
weights per channel, and a grouped convolution with as many output as input channels keeps each group of channels
apart (its channels go a whole group at a time); a module of a subclass takes its base class's role; an
*element-wise* layer or operation (activations, dropout, pooling, identity) leaves channels where they are; a
*binary* operation (sum, difference, product of tensors) ties its operands' channels together; a product is zero
where any factor is, and an element-wise operation that makes zero nonzero (sigmoid, softplus) hides zeros.
Anything else is unknown, and the channels it touches are not thinned.

Layouts of a tensor, tracked along the graph so that each layer reads channels where they really are:
``spatial`` (N, C, *spatial), ``flat`` (N, C * f) after a flatten, each channel a block of f features,
``last`` (..., C) after a linear layer, and ``unknown``.
"""
from __future__ import annotations

import operator
from typing import Callable, Set

import torch
import torch.nn.functional as F
from torch import fx, nn

SPATIAL, FLAT, LAST, UNKNOWN = "spatial", "flat", "last", "unknown"

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
         nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
         nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
               nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout,
               nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)

ELEMENTWISE_FUNCTIONS: Set[Callable] = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp,
}
POOL_FUNCTIONS: Set[Callable] = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.interpolate, F.pad,
}
ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "detach",
                       "clamp", "clamp_", "float", "to"}
BINARY_FUNCTIONS: Set[Callable] = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                                   operator.imul, torch.add, torch.sub, torch.mul}
BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_"}
PRODUCT_FUNCTIONS: Set[Callable] = {operator.mul, operator.imul, torch.mul}
PRODUCT_METHODS = {"mul", "mul_"}
#: element-wise layers and operations whose output is not zero where their input is
NONZERO_AT_ZERO = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
NONZERO_AT_ZERO_FUNCTIONS: Set[Callable] = {F.sigmoid, F.hardsigmoid, F.softplus, torch.sigmoid}
NONZERO_AT_ZERO_METHODS = {"sigmoid", "sigmoid_"}
SIZE_METHODS = {"size", "dim", "numel"}
PYTHON_MODULES = ("_operator", "operator", "builtins")


def is_weighted(module: nn.Module) -> bool:
    """A convolution (not per-channel) or linear layer: reads channels and creates new ones."""
    return isinstance(module, (nn.Linear, *CONVS)) and not is_per_channel(module)


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter per input channel."""
    return isinstance(module, CONVS) and module.groups > 1 and \
        module.groups == module.in_channels == module.out_channels


def is_grouped(module: nn.Module) -> bool:
    """A grouped convolution (not depthwise) with as many output as input channels: groups kept apart."""
    return isinstance(module, CONVS) and module.groups > 1 and not is_depthwise(module) and \
        module.in_channels == module.out_channels


def is_per_channel(module: nn.Module) -> bool:
    """Batch norm, a depthwise convolution or a grouped one with equal channel counts: channels kept apart."""
    return isinstance(module, NORMS) or is_depthwise(module) or is_grouped(module)


def channel_block(module: nn.Module) -> int:
    """How many channels go together through a per-channel layer: a grouped convolution's group width, or 1."""
    return module.in_channels // module.groups if is_grouped(module) else 1


def keeps_zeros(module: nn.Module) -> bool:
    """Whether an element-wise layer outputs zero where its input is zero."""
    return not isinstance(module, NONZERO_AT_ZERO)


def op_keeps_zeros(node: fx.Node) -> bool:
    """Whether an element-wise operation outputs zero where its input is zero."""
    if node.op == "call_method":
        return node.target not in NONZERO_AT_ZERO_METHODS
    return node.target not in NONZERO_AT_ZERO_FUNCTIONS


def is_product(node: fx.Node) -> bool:
    """A binary operation multiplying its operands: zero where any of them is."""
    return node.target in (PRODUCT_METHODS if node.op == "call_method" else PRODUCT_FUNCTIONS)


def module_problem(module: nn.Module, layout: str) -> str:
    """Why ``module`` cannot take part in thinning with an input of ``layout`` ('' when it can)."""
    if isinstance(module, CONVS):
        if module.groups > 1 and not is_per_channel(module):
            return "is a grouped convolution with different input and output channel counts"
        return "" if layout in (SPATIAL, UNKNOWN) else "reads a tensor without a spatial channel layout"
    if isinstance(module, NORMS):
        return "" if layout in (SPATIAL, FLAT) else "normalizes a tensor whose channel dimension is unknown"
    if isinstance(module, nn.Linear):
        return "" if layout in (FLAT, LAST, UNKNOWN) else "reads a tensor whose last dimension is not the channels"
    if isinstance(module, nn.Flatten):
        return "" if module.start_dim == 1 and module.end_dim == -1 else "flattens other dimensions than (1, -1)"
    if isinstance(module, POOLS):
        if getattr(module, "return_indices", False):
            return "returns indices"
        return "" if layout in (SPATIAL, UNKNOWN) else "pools a tensor without a spatial channel layout"
    if isinstance(module, ELEMENTWISE) or (isinstance(module, nn.PReLU) and module.num_parameters == 1):
        return ""
    return "is not known to thinning"


def consumer_problem(module: nn.Module, layout: str, channels: int) -> str:
    """Why a weighted layer cannot read ``channels`` channels laid out as ``layout`` ('' when it can)."""
    if isinstance(module, CONVS):
        return "" if layout == SPATIAL else "reads a tensor whose channel layout is unknown"
    if layout not in (FLAT, LAST):
        return "reads a tensor whose channel layout is unknown"
    size = module.in_features
    if layout == LAST and size != channels:
        return f"reads {size} features, not the {channels} channels"
    if channels <= 0 or size % channels:
        return f"reads {size} features, not a multiple of the {channels} channels"
    return ""


def out_size(module: nn.Module) -> int:
    """Channels a weighted or per-channel layer outputs."""
    if isinstance(module, NORMS):
        return module.num_features
    return module.out_channels if isinstance(module, CONVS) else module.out_features


def in_size(module: nn.Module) -> int:
    """Channels (or features) a weighted layer reads."""
    return module.in_channels if isinstance(module, CONVS) else module.in_features


def op_kind(node: fx.Node) -> str:
    """``size`` (yields sizes, not tensors), ``binary``, ``elementwise``, ``pool``, ``flatten``, ``batch_norm``
    (an inlined ``F.batch_norm``) or ``unknown``."""
    method = node.op == "call_method"
    target = node.target
    if _is_size(node, method):
        return "size"
    if not method and target is F.batch_norm:
        return "batch_norm"
    if target in (BINARY_METHODS if method else BINARY_FUNCTIONS):
        return "binary"
    if target in (ELEMENTWISE_METHODS if method else ELEMENTWISE_FUNCTIONS):
        return "elementwise"
    if (not method and target in POOL_FUNCTIONS) or _is_spatial_mean(node, method):
        return "pool"
    if _is_flatten(node, method):
        return "flatten"
    return "unknown"


def is_python_op(node: fx.Node) -> bool:
    """Plain Python arithmetic or indexing (on sizes, when no tensor is involved)."""
    return node.op == "call_function" and getattr(node.target, "__module__", None) in PYTHON_MODULES


def op_name(node: fx.Node) -> str:
    """``.view()`` for a method, the function's name otherwise."""
    target = node.target
    return f".{target}()" if node.op == "call_method" else getattr(target, "__name__", str(target))


def _is_size(node: fx.Node, method: bool) -> bool:
    """``x.size(0)``, ``x.dim()``, ``x.shape``."""
    if method:
        return node.target in SIZE_METHODS
    return node.target is getattr and len(node.args) > 1 and node.args[1] in ("shape", "ndim")


def _is_spatial_mean(node: fx.Node, method: bool) -> bool:
    """``x.mean((2, 3), keepdim=True)`` or ``torch.mean(x, (2, 3), keepdim=True)`` (timm's squeeze-and-excite):
    a mean over dimensions after the channels, keeping them, pools each channel on its own."""
    is_mean = node.target == "mean" if method else node.target is torch.mean
    if not is_mean:
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    dims = (dims,) if isinstance(dims, int) else dims
    return keepdim is True and isinstance(dims, (list, tuple)) and bool(dims) \
        and all(isinstance(d, int) and d >= 2 for d in dims)


def _is_flatten(node: fx.Node, method: bool) -> bool:
    """``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(n, -1)`` or ``x.reshape(n, -1)``."""
    args = list(node.args[1:])
    if (method and node.target == "flatten") or (not method and node.target is torch.flatten):
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return start == 1 and end == -1
    if (method and node.target in ("view", "reshape")) or (not method and node.target is torch.reshape):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return len(shape) == 2 and shape[1] == -1
    return False
