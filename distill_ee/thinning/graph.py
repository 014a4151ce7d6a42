"""Channel dependency graph built with torch.fx: which layers must lose the same channels together.

A *channel group* is a set of tensors whose channel dimension shrinks as one:

* producers: convolutions and linear layers whose output channels (filters, rows) create the channels;
* per-channel layers they pass through: batch norm and depthwise convolutions;
* consumers: the convolutions and linear layers reading them (a linear layer after a flatten reads each
  channel as a block of ``factor`` features).

Element-wise sums and products (residual connections) merge the groups of their operands: a channel can only
be removed from all of them at once. Early-exit branches (``model.early_exits``) are traced too; a branch
reads its attach module's output, so its first layers join that output's group.

A group is *blocked*, with the reason, when its channels reach something thinning cannot shrink: the model's
input or output, a grouped convolution, an operation that mixes or reorders channels (cat, slicing, reshapes
other than a flatten), a tensor attribute used directly, or a module thinning does not know.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import DistillEEError
from .exits import exit_attach_points, exit_branches
from .tracing import ModuleOutputTracer, trace, unwrap

#: channel layouts of a tensor: (N, C, *spatial), (N, C * f) after a flatten, (..., C) after a linear layer
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
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.relu,
    torch.sigmoid, torch.tanh, torch.clamp, F.relu_, torch.relu_,
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
SCALAR_METHODS = {"size", "dim", "numel"}


@dataclass
class Consumer:
    """A layer reading a group's channels: its input dimension loses the removed channels."""

    module: str
    #: features per channel in the layer's input (1, or H*W for a linear layer after a flatten)
    factor: int = 1


@dataclass
class ChannelGroup:
    """Tensors whose channels are removed together; ``blocked`` says why they cannot be, if they cannot."""

    channels: int
    producers: List[str] = field(default_factory=list)
    per_channel: List[str] = field(default_factory=list)
    consumers: List[Consumer] = field(default_factory=list)
    blocked: Optional[str] = None

    @property
    def removable(self) -> bool:
        """True when channels of this group can be removed."""
        return self.blocked is None

    def describe(self) -> str:
        """Short description: its producers, or its consumers when it has none."""
        names = self.producers or [c.module for c in self.consumers]
        shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
        return f"channels of {shown}" if self.producers else f"inputs of {shown}"


class DependencyGraph:
    """The channel groups of a model, with lookups by producing and consuming layer."""

    def __init__(self, groups: List[ChannelGroup]):
        self.groups = groups
        self._by_producer = {p: g for g in groups for p in g.producers}
        self._by_consumer = {c.module: g for g in groups for c in g.consumers}

    def producer_group(self, module: str) -> Optional[ChannelGroup]:
        """The group of the channels that ``module`` outputs (None if it is not a producer)."""
        return self._by_producer.get(module)

    def consumer_group(self, module: str) -> Optional[ChannelGroup]:
        """The group of the channels that ``module`` reads (None if it is not a consumer)."""
        return self._by_consumer.get(module)


def build_dependency_graph(model: nn.Module, exits: Optional[Mapping[str, str]] = None) -> DependencyGraph:
    """Trace ``model`` (and its exit branches) with torch.fx and group the layers by shared channels.

    ``exits`` maps exit names to attach module names; by default it is read from the model's exits.
    """
    inner, prefix = unwrap(model)
    builder = _GroupBuilder(model)
    tracer, graph = trace(inner)
    builder.add_graph(graph, prefix)
    attach = exit_attach_points(inner, exits)
    for name, branch in exit_branches(inner).items():
        _, branch_graph = trace(branch)
        builder.add_graph(branch_graph, f"{prefix}early_exits.{name}.", what=f"exit {name!r}",
                          source=_attach_output(tracer, attach[name], name))
    return DependencyGraph(builder.finish())


def _attach_output(tracer: ModuleOutputTracer, module: str, exit_name: str) -> Tuple[Optional[fx.Node], str]:
    nodes = tracer.outputs.get(module, [])
    if len(nodes) == 1:
        return nodes[0], ""
    if not nodes:
        return None, f"exit {exit_name!r} reads {module!r}, whose output the traced graph does not show"
    return None, f"exit {exit_name!r} reads {module!r}, which runs {len(nodes)} times"


# --------------------------------------------------------------------------- building the groups
class _UnionFind:
    def __init__(self) -> None:
        self.parent: Dict[fx.Node, fx.Node] = {}

    def find(self, node: fx.Node) -> fx.Node:
        self.parent.setdefault(node, node)
        root = node
        while self.parent[root] is not root:
            root = self.parent[root]
        while self.parent[node] is not root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: fx.Node, b: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra


@dataclass
class _Call:
    """One call of a layer in a traced graph."""

    module: str
    node: fx.Node
    input: Optional[fx.Node]


class _GroupBuilder:
    """Walks traced graphs node by node, merging tensors that share channels and noting layers' roles."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self.sets = _UnionFind()
        self.layout: Dict[fx.Node, str] = {}
        self.scalars: Set[fx.Node] = set()
        self.blocks: List[Tuple[fx.Node, str]] = []
        self.producers: List[_Call] = []
        self.per_channel: List[_Call] = []
        self.consumers: List[_Call] = []
        self.prefix = ""

    # ----------------------------------------------------------------- graph walk
    def add_graph(self, graph: fx.Graph, prefix: str, *, what: str = "the model",
                  source: Optional[Tuple[Optional[fx.Node], str]] = None) -> None:
        """Add every node of ``graph`` (module names prefixed); ``source`` is the node an exit branch reads,
        or None with the reason it cannot be used (None for the model itself)."""
        self.prefix = prefix
        for node in graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, source)
            elif node.op == "output":
                for arg in self._tensor_args(node):
                    self.blocks.append((arg, f"they are {what}'s output"))
            elif node.op == "get_attr":
                self.layout[node] = UNKNOWN
                self.blocks.append((node, f"the forward pass uses the tensor {prefix}{node.target} directly"))
            elif node.op == "call_module":
                self._call_module(node)
            else:
                self._call_op(node)

    def _placeholder(self, node: fx.Node, source: Optional[Tuple[Optional[fx.Node], str]]) -> None:
        """The model's input is never thinned; a branch's input is the tensor it reads from the model."""
        self.sets.find(node)
        self.layout[node] = UNKNOWN
        if source is None:
            self.blocks.append((node, "they are the model's input"))
        elif source[0] is None:
            self.blocks.append((node, source[1]))
        else:
            self.layout[node] = self.layout.get(source[0], UNKNOWN)
            self.sets.union(source[0], node)

    def _tensor_args(self, node: fx.Node) -> List[fx.Node]:
        found: List[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n not in self.scalars else None)
        return found

    def _block_all(self, node: fx.Node, reason: str) -> None:
        for arg in self._tensor_args(node):
            self.blocks.append((arg, reason))
        self.blocks.append((node, reason))
        self.layout[node] = UNKNOWN

    def _passthrough(self, node: fx.Node, source: fx.Node, layout: Optional[str] = None) -> None:
        self.sets.union(source, node)
        self.layout[node] = layout or self.layout.get(source, UNKNOWN)

    # ----------------------------------------------------------------- modules
    def _call_module(self, node: fx.Node) -> None:
        name = self.prefix + str(node.target)
        module = self.modules.get(name)
        tensors = self._tensor_args(node)
        if module is None or len(tensors) != 1:
            self._block_all(node, f"module {name!r} takes {len(tensors)} tensors")
            return
        source = tensors[0]
        layout = self.layout.get(source, UNKNOWN)
        reason = _module_role_problem(module, layout)
        reason = f"{name!r} ({type(module).__name__}) {reason}" if reason else ""
        if isinstance(module, (nn.Linear, *CONVS)) and not _is_depthwise(module):
            self._weighted_layer(node, name, module, source, layout, reason)
        elif reason:
            self._block_all(node, reason)
        elif _is_depthwise(module) or isinstance(module, NORMS):
            self._passthrough(node, source)
            self.per_channel.append(_Call(name, node, source))
        elif isinstance(module, nn.Flatten):
            self._passthrough(node, source, FLAT if layout in (SPATIAL, FLAT) else UNKNOWN)
        else:
            self._passthrough(node, source)

    def _weighted_layer(self, node: fx.Node, name: str, module: nn.Module, source: fx.Node, layout: str,
                        reason: str) -> None:
        """A convolution or linear layer: consumer of its input's channels, producer of its output's."""
        self.sets.find(node)
        self.layout[node] = SPATIAL if isinstance(module, CONVS) else (FLAT if layout == FLAT else LAST)
        self.producers.append(_Call(name, node, source))
        self.consumers.append(_Call(name, node, source))
        if reason:
            self.blocks += [(source, reason), (node, reason)]

    # ----------------------------------------------------------------- functions and methods
    def _call_op(self, node: fx.Node) -> None:
        target = node.target
        tensors = self._tensor_args(node)
        is_method = node.op == "call_method"
        if not tensors or _scalar_op(node, is_method):
            self.scalars.add(node)
            return
        first = tensors[0]
        layout = self.layout.get(first, UNKNOWN)
        if (is_method and target in BINARY_METHODS) or (not is_method and target in BINARY_FUNCTIONS):
            self._binary(node, tensors)
        elif (is_method and target in ELEMENTWISE_METHODS) or (not is_method and target in ELEMENTWISE_FUNCTIONS):
            self._single_tensor(node, tensors, layout)
        elif not is_method and target in POOL_FUNCTIONS:
            if layout != SPATIAL:
                self._block_all(node, f"{_op_name(node)} on a tensor without a spatial channel layout")
            else:
                self._single_tensor(node, tensors, layout)
        elif _is_flatten(node, is_method):
            self._passthrough(node, first, FLAT if layout in (SPATIAL, FLAT) else UNKNOWN)
        else:
            self._block_all(node, f"the operation {_op_name(node)} is not known to thinning")

    def _single_tensor(self, node: fx.Node, tensors: List[fx.Node], layout: str) -> None:
        if len(tensors) != 1:
            self._block_all(node, f"{_op_name(node)} combines {len(tensors)} tensors")
        else:
            self._passthrough(node, tensors[0], layout)

    def _binary(self, node: fx.Node, tensors: List[fx.Node]) -> None:
        layouts = {self.layout.get(t, UNKNOWN) for t in tensors}
        if len(layouts) > 1:
            self._block_all(node, f"{_op_name(node)} combines tensors of different layouts")
            return
        for t in tensors:
            self.sets.union(t, node)
        self.layout[node] = layouts.pop()

    # ----------------------------------------------------------------- result
    def finish(self) -> List[ChannelGroup]:
        """Merge the calls of shared layers, then collect one ChannelGroup per set."""
        self._merge_shared_layers()
        groups: Dict[fx.Node, ChannelGroup] = {}
        order: List[fx.Node] = []

        def group_of(node: fx.Node) -> ChannelGroup:
            root = self.sets.find(node)
            if root not in groups:
                groups[root] = ChannelGroup(channels=-1)
                order.append(root)
            return groups[root]

        for call in self.producers:
            _add_unique(group_of(call.node).producers, call.module)
        for call in self.per_channel:
            _add_unique(group_of(call.node).per_channel, call.module)
        consumer_layouts: Dict[Tuple[fx.Node, str], str] = {}
        for call in self.consumers:
            root = self.sets.find(call.input)
            consumer_layouts.setdefault((root, call.module), self.layout.get(call.input, UNKNOWN))
            group = group_of(call.input)
            if call.module not in [c.module for c in group.consumers]:
                group.consumers.append(Consumer(call.module))
        for node, reason in self.blocks:
            group = group_of(node)
            group.blocked = group.blocked or reason
        roots = [r for r in order if groups[r].producers or groups[r].consumers]
        for root in roots:
            self._size_group(groups[root], root, consumer_layouts)
        return [groups[r] for r in roots]

    def _merge_shared_layers(self) -> None:
        first_out: Dict[str, fx.Node] = {}
        first_in: Dict[str, fx.Node] = {}
        for call in self.producers + self.per_channel:
            self.sets.union(first_out.setdefault(call.module, call.node), call.node)
        for call in self.consumers:
            self.sets.union(first_in.setdefault(call.module, call.input), call.input)

    def _size_group(self, group: ChannelGroup, root: fx.Node,
                    consumer_layouts: Dict[Tuple[fx.Node, str], str]) -> None:
        sizes = {_out_channels(self.modules[p]) for p in group.producers}
        sizes |= {_norm_channels(self.modules[m]) for m in group.per_channel}
        if not group.producers:
            group.blocked = group.blocked or "no layer of the model produces them"
        if len(sizes) > 1:
            group.blocked = group.blocked or f"their layers disagree on the channel count ({sorted(sizes)})"
        group.channels = min(sizes) if sizes else _in_size(self.modules[group.consumers[0].module])
        for consumer in group.consumers:
            layout = consumer_layouts.get((root, consumer.module), UNKNOWN)
            problem = _consumer_problem(self.modules[consumer.module], layout, group.channels)
            if problem:
                group.blocked = group.blocked or f"{consumer.module!r} {problem}"
            elif layout == FLAT:
                consumer.factor = _in_size(self.modules[consumer.module]) // group.channels


# --------------------------------------------------------------------------- layer rules
def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, CONVS) and module.groups > 1 and \
        module.groups == module.in_channels == module.out_channels


def _module_role_problem(module: nn.Module, layout: str) -> str:
    """Why ``module`` cannot take part in thinning with an input of ``layout`` ('' when it can)."""
    if isinstance(module, CONVS):
        if module.groups > 1 and not _is_depthwise(module):
            return "is a grouped convolution"
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
    if isinstance(module, ELEMENTWISE):
        return ""
    if isinstance(module, nn.PReLU) and module.num_parameters == 1:
        return ""
    return "is not known to thinning"


def _consumer_problem(module: nn.Module, layout: str, channels: int) -> str:
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


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, CONVS) else module.out_features


def _norm_channels(module: nn.Module) -> int:
    return module.num_features if isinstance(module, NORMS) else module.out_channels


def _in_size(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, CONVS) else module.in_features


def _is_flatten(node: fx.Node, is_method: bool) -> bool:
    """``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(n, -1)`` or ``x.reshape(n, -1)``."""
    args = list(node.args[1:])
    if (is_method and node.target == "flatten") or (not is_method and node.target is torch.flatten):
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return start == 1 and end == -1
    if is_method and node.target in ("view", "reshape") or (not is_method and node.target is torch.reshape):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return len(shape) == 2 and shape[1] == -1
    return False


def _scalar_op(node: fx.Node, is_method: bool) -> bool:
    """True for operations on tensors that yield sizes, not tensors (``x.size(0)``, ``x.shape[0]``)."""
    if is_method:
        return node.target in SCALAR_METHODS
    if node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim")
    return False


def _op_name(node: fx.Node) -> str:
    target = node.target
    return f".{target}()" if node.op == "call_method" else getattr(target, "__name__", str(target))


def _add_unique(items: List[str], item: str) -> None:
    if item not in items:
        items.append(item)

