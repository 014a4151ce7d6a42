"""Channel dependency graph built with torch.fx: which layers must lose the same channels together.

A channel group (``groups.py``) is a set of tensors whose channel dimension shrinks as one: the producers creating
the channels (convolution filters, linear rows), the per-channel layers carrying them (batch norm, depthwise
convolutions, grouped convolutions with equal channel counts, whose groups go whole) and the consumers reading them
(a linear layer after a flatten reads each channel as a block of ``factor`` features). Element-wise sums and
products (residual connections) merge the groups of their operands: a channel can only be removed from all of them
at once (when it goes is ``zeros.py``'s business: a sum needs it zero in every term, a product in one factor).
Early-exit branches (``ExitSet`` modules, which declare their attach points) are traced too; a branch reads its
attach module's output, so its first layers join that output's group.

A group is *blocked*, with the reason, when its channels reach something thinning cannot shrink: the model's input
or output, a grouped convolution with different input and output channel counts, an operation that mixes or
reorders channels (cat, slicing, reshapes other than a flatten), a tensor attribute used directly, or a module
thinning does not know (``rules.py``).
"""
from __future__ import annotations

from typing import List, Mapping, Optional

from torch import nn

from .builder import GroupBuilder, Source
from .exits import exit_branches
from .groups import ChannelGroup
from ..modules import unwrap, wrapper_prefix
from .tracing import ModuleOutputTracer, trace


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

    ``exits`` maps exit names to attach module names; by default the model's ExitSets declare them.
    """
    inner, prefix = unwrap(model), wrapper_prefix(model)
    builder = GroupBuilder(model)
    tracer, graph = trace(inner)
    builder.add_graph(graph, prefix)
    for branch in exit_branches(inner, exits):
        _, branch_graph = trace(branch.module)
        name = branch.name.rpartition(".")[2]
        builder.add_graph(branch_graph, f"{prefix}{branch.name}.", what=f"exit {name!r}",
                          source=_attach_output(tracer, branch.reads, name))
    return DependencyGraph(builder.finish())


def _attach_output(tracer: ModuleOutputTracer, module: str, exit_name: str) -> Source:
    nodes = tracer.outputs.get(module, [])
    if len(nodes) == 1:
        return nodes[0], ""
    if not nodes:
        return None, f"exit {exit_name!r} reads {module!r}, whose output the traced graph does not show"
    return None, f"exit {exit_name!r} reads {module!r}, which runs {len(nodes)} times"
