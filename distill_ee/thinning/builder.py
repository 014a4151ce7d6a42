"""Walks traced fx graphs node by node, merging the tensors that share channels into channel groups.

Each tensor node starts in a set of its own; element-wise operations, per-channel layers and flattens put their
output in their input's set, binary operations merge their operands' sets, weighted layers start a new set for
their output. Every tensor also gets the expression saying where its channels are zero (``zeros.py``): a product
of tensors is zero where any factor is, a sum where every term is. Every layer call is noted with its role;
blocks (reasons a set cannot be thinned) are noted on the nodes they concern. ``finish`` merges the calls of
layers used more than once and turns each set into a ChannelGroup.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import lcm
from typing import Dict, List, Optional, Set, Tuple

from torch import fx, nn

from .groups import ChannelGroup, Consumer
from .rules import (CONVS, FLAT, LAST, NORMS, SPATIAL, UNKNOWN, channel_block, consumer_problem, in_size,
                    is_per_channel, is_product, is_python_op, is_weighted, keeps_zeros, module_problem, op_keeps_zeros,
                    op_kind, op_name, out_size)
from .zeros import NEVER, AllOf, AnyOf, Blocks, Filters, Zeros

#: what an exit branch reads: the node of its attach module's output, or None and the reason it is unusable
Source = Tuple[Optional[fx.Node], str]


class UnionFind:
    """Disjoint sets of fx nodes."""

    def __init__(self) -> None:
        self.parent: Dict[fx.Node, fx.Node] = {}

    def find(self, node: fx.Node) -> fx.Node:
        """The representative of ``node``'s set."""
        self.parent.setdefault(node, node)
        root = node
        while self.parent[root] is not root:
            root = self.parent[root]
        while self.parent[node] is not root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: fx.Node, b: fx.Node) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra


@dataclass
class LayerCall:
    """One call of a layer: its name, output node and input node."""

    module: str
    node: fx.Node
    input: fx.Node


class GroupBuilder:
    """Collects the channel groups of one model from its traced graph and its exit branches' graphs."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self.sets = UnionFind()
        self.layout: Dict[fx.Node, str] = {}
        self.zeros: Dict[fx.Node, Zeros] = {}
        self.sizes: Set[fx.Node] = set()
        self.blocks: List[Tuple[fx.Node, str]] = []
        self.producers: List[LayerCall] = []
        self.per_channel: List[LayerCall] = []
        self.consumers: List[LayerCall] = []
        self.prefix = ""

    # ----------------------------------------------------------------- graph walk
    def add_graph(self, graph: fx.Graph, prefix: str, *, what: str = "the model",
                  source: Optional[Source] = None) -> None:
        """Add every node of ``graph``, whose module names get ``prefix``; ``source`` is what an exit
        branch reads (None for the model itself, whose input is never thinned)."""
        self.prefix = prefix
        for node in graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, source)
            elif node.op == "output":
                for arg in self._tensor_args(node):
                    self.blocks.append((arg, f"they are {what}'s output"))
            elif node.op == "get_attr" and self._norm_owner([node]) and \
                    all(op_kind(user) == "batch_norm" for user in node.users):
                self.sizes.add(node)  # an inlined batch norm's own statistics and affine parameters
            elif node.op == "get_attr":
                self.layout[node] = UNKNOWN
                self.blocks.append((node, f"the forward pass uses the tensor {prefix}{node.target} directly"))
            elif node.op == "call_module":
                self._call_module(node)
            else:
                self._call_op(node)

    def _placeholder(self, node: fx.Node, source: Optional[Source]) -> None:
        self.sets.find(node)
        self.layout[node] = UNKNOWN
        if source is None:
            self.blocks.append((node, "they are the model's input"))
        elif source[0] is None:
            self.blocks.append((node, source[1]))
        else:
            self.layout[node] = self.layout.get(source[0], UNKNOWN)
            self.zeros[node] = self.zeros.get(source[0], NEVER)
            self.sets.union(source[0], node)

    def _tensor_args(self, node: fx.Node) -> List[fx.Node]:
        found: List[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n not in self.sizes else None)
        return found

    def _block_all(self, node: fx.Node, reason: str) -> None:
        for arg in self._tensor_args(node):
            self.blocks.append((arg, reason))
        self.blocks.append((node, reason))
        self.layout[node] = UNKNOWN

    def _carry(self, node: fx.Node, source: fx.Node, layout: Optional[str] = None,
               zeros: Optional[Zeros] = None) -> None:
        """``node`` holds the channels of ``source`` (in ``layout`` and zero as ``zeros``, default: the same)."""
        self.sets.union(source, node)
        self.layout[node] = layout or self.layout.get(source, UNKNOWN)
        self.zeros[node] = zeros or self.zeros.get(source, NEVER)

    # ----------------------------------------------------------------- modules
    def _call_module(self, node: fx.Node) -> None:
        name = self.prefix + str(node.target)
        module = self.modules[name]
        tensors = self._tensor_args(node)
        if len(tensors) != 1:
            self._block_all(node, f"module {name!r} takes {len(tensors)} tensors")
            return
        source = tensors[0]
        layout = self.layout.get(source, UNKNOWN)
        problem = module_problem(module, layout)
        reason = f"{name!r} ({type(module).__name__}) {problem}" if problem else ""
        if is_weighted(module):
            self._weighted(node, name, module, source, layout, reason)
        elif reason:
            self._block_all(node, reason)
        elif is_per_channel(module):
            block = channel_block(module)
            self._carry(node, source, zeros=Blocks(self.zeros.get(source, NEVER), block) if block > 1 else None)
            self.per_channel.append(LayerCall(name, node, source))
        elif isinstance(module, nn.Flatten):
            self._carry(node, source, FLAT if layout in (SPATIAL, FLAT) else UNKNOWN)
        else:
            self._carry(node, source, zeros=None if keeps_zeros(module) else NEVER)

    def _weighted(self, node: fx.Node, name: str, module: nn.Module, source: fx.Node, layout: str,
                  reason: str) -> None:
        """A convolution or linear layer: consumer of its input's channels, producer of its output's."""
        self.sets.find(node)
        self.layout[node] = SPATIAL if isinstance(module, CONVS) else (FLAT if layout == FLAT else LAST)
        self.zeros[node] = Filters(name)
        self.producers.append(LayerCall(name, node, source))
        self.consumers.append(LayerCall(name, node, source))
        if reason:
            self.blocks += [(source, reason), (node, reason)]

    # ----------------------------------------------------------------- functions and methods
    def _call_op(self, node: fx.Node) -> None:
        tensors = self._tensor_args(node)
        kind = op_kind(node)
        if kind == "size" or (not tensors and is_python_op(node)):
            self.sizes.add(node)
        elif not tensors:
            self.layout[node] = UNKNOWN
            self.blocks.append((node, f"{op_name(node)} creates a tensor of its own"))
        elif kind == "binary":
            self._binary(node, tensors)
        elif kind in ("elementwise", "pool"):
            layout = self.layout.get(tensors[0], UNKNOWN)
            if len(tensors) != 1:
                self._block_all(node, f"{op_name(node)} combines {len(tensors)} tensors")
            elif kind == "pool" and layout != SPATIAL:
                self._block_all(node, f"{op_name(node)} on a tensor without a spatial channel layout")
            else:
                self._carry(node, tensors[0], zeros=None if op_keeps_zeros(node) else NEVER)
        elif kind == "batch_norm":
            self._inlined_norm(node, tensors)
        elif kind == "flatten":
            layout = self.layout.get(tensors[0], UNKNOWN)
            self._carry(node, tensors[0], FLAT if layout in (SPATIAL, FLAT) else UNKNOWN)
        else:
            self._block_all(node, f"the operation {op_name(node)} is not known to thinning")

    def _binary(self, node: fx.Node, tensors: List[fx.Node]) -> None:
        layouts = {self.layout.get(t, UNKNOWN) for t in tensors}
        if len(layouts) > 1:
            self._block_all(node, f"{op_name(node)} combines tensors of different layouts")
            return
        for t in tensors:
            self.sets.union(t, node)
        self.layout[node] = layouts.pop()
        self.zeros[node] = self._binary_zeros(node, tensors)

    def _binary_zeros(self, node: fx.Node, tensors: List[fx.Node]) -> Zeros:
        """A product is zero where any factor is; a sum or difference where every term is, and no constant."""
        terms = tuple(self.zeros.get(t, NEVER) for t in tensors)
        if is_product(node):
            return AnyOf(terms)
        operands = len(node.args) + len(node.kwargs)
        return AllOf(terms) if operands == len(tensors) else NEVER

    def _inlined_norm(self, node: fx.Node, tensors: List[fx.Node]) -> None:
        """``F.batch_norm`` on the statistics of a batch norm module (a subclass whose forward fx inlines)."""
        owner = self._norm_owner([a for a in node.all_input_nodes if a.op == "get_attr"])
        layout = self.layout.get(tensors[0], UNKNOWN) if tensors else UNKNOWN
        problem = module_problem(self.modules[owner], layout) if owner else ""
        if owner is None or len(tensors) != 1 or problem:
            self._block_all(node, f"{owner!r} {problem}" if problem else
                            f"the operation {op_name(node)} is not known to thinning")
            return
        self._carry(node, tensors[0])
        self.per_channel.append(LayerCall(owner, node, tensors[0]))

    def _norm_owner(self, attributes: List[fx.Node]) -> Optional[str]:
        """The batch norm module owning every one of ``attributes`` (get_attr nodes), if there is one."""
        owners = {self.prefix + str(a.target).rpartition(".")[0] for a in attributes}
        if len(owners) != 1:
            return None
        owner = owners.pop()
        return owner if isinstance(self.modules.get(owner), NORMS) else None

    # ----------------------------------------------------------------- result
    def finish(self) -> List[ChannelGroup]:
        """Merge the calls of layers used more than once, then one ChannelGroup per set with layers in it."""
        self._merge_shared_layers()
        groups: Dict[fx.Node, ChannelGroup] = {}

        def group_of(node: fx.Node) -> ChannelGroup:
            """The group of ``node``'s set, created on first use."""
            return groups.setdefault(self.sets.find(node), ChannelGroup(channels=-1))

        for call in self.producers:
            _add_unique(group_of(call.node).producers, call.module)
        for call in self.per_channel:
            _add_unique(group_of(call.node).per_channel, call.module)
        layouts: Dict[Tuple[int, str], str] = {}
        for call in self.consumers:
            group = group_of(call.input)
            _add_unique_object(group.reads, self.zeros.get(call.input, NEVER))
            layouts.setdefault((id(group), call.module), self.layout.get(call.input, UNKNOWN))
            if call.module not in [c.module for c in group.consumers]:
                group.consumers.append(Consumer(call.module))
        for node, reason in self.blocks:
            group = group_of(node)
            group.blocked = group.blocked or reason
        found = [g for g in groups.values() if g.producers or g.consumers]
        for group in found:
            group.block = lcm(1, *(channel_block(self.modules[m]) for m in group.per_channel))
            self._size(group, {c.module: layouts[(id(group), c.module)] for c in group.consumers})
        return found

    def _merge_shared_layers(self) -> None:
        first_out: Dict[str, fx.Node] = {}
        first_in: Dict[str, fx.Node] = {}
        for call in self.producers + self.per_channel:
            self.sets.union(first_out.setdefault(call.module, call.node), call.node)
        for call in self.consumers:
            self.sets.union(first_in.setdefault(call.module, call.input), call.input)

    def _size(self, group: ChannelGroup, consumer_layouts: Dict[str, str]) -> None:
        """Set the group's channel count and consumer factors; block it where the layers disagree."""
        sizes = {out_size(self.modules[m]) for m in group.producers + group.per_channel}
        if not group.producers:
            group.blocked = group.blocked or "no layer of the model produces them"
        if len(sizes) > 1:
            group.blocked = group.blocked or f"their layers disagree on the channel count ({sorted(sizes)})"
        group.channels = min(sizes) if sizes else in_size(self.modules[group.consumers[0].module])
        for consumer in group.consumers:
            module, layout = self.modules[consumer.module], consumer_layouts[consumer.module]
            problem = consumer_problem(module, layout, group.channels)
            if problem:
                group.blocked = group.blocked or f"{consumer.module!r} {problem}"
            elif layout == FLAT:
                consumer.factor = in_size(module) // group.channels


def _add_unique(items: List[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _add_unique_object(items: List[Zeros], item: Zeros) -> None:
    if all(x is not item for x in items):
        items.append(item)
