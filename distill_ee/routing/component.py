"""Routing as a schedule component: resolve the blocks, attach the routing, hand its parameters to the optimizer.

A routing class of the ``routing`` section (``SkipGates``, ``BlockDrop``) builds itself from its arguments:
it resolves the blocks (``blocks.resolve_blocks``), and its ``make_set`` makes the RoutingSet from what the
blocks cost and read; the set is attached through ``distill_ee.attachment.attach``, which records the
structure step that rebuilds it from a checkpoint without the schedule (``RoutingSet.from_step``).

``Routing.of(model)`` gives the component's view of a model's routing (after training or a checkpoint load).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Dict, List

from torch import nn

from ..arguments import ArgumentError
from ..attachment import Attachment, AttachmentView, attach
from ..context import BuildContext
from ..modules import unwrap
from .blocks import BlockFacts, resolve_blocks
from .router import RoutingSet, make_routing_set


class Routing(AttachmentView):
    """The routing of one model: the RoutingSet it holds (looked up each time: a checkpoint may replace it)."""

    attachment_type = RoutingSet

    @property
    def set(self) -> RoutingSet:
        """The model's RoutingSet."""
        return self.attachment

    @property
    def kind(self) -> str:
        """The routing class (``SkipGates``, ``BlockDrop``)."""
        return self.set.class_name

    @classmethod
    def make_set(cls, model: nn.Module, facts: BlockFacts, config: Dict[str, Any], name: str) -> RoutingSet:
        """The RoutingSet of this routing class from the blocks' ``facts`` and its resolved ``config``."""
        raise NotImplementedError(f"{cls.__name__} does not say how it makes its routing set")

    def parameters(self) -> List[nn.Parameter]:
        """The gates' or policy network's parameters."""
        return list(self.set.parameters())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, blocks={self.set.block_names})"


def build_routing(cls: type, ctx: BuildContext, config: Dict[str, Any]) -> Any:
    """Resolve the blocks of a schedule instance, attach the routing, add its parameters to the optimizer."""
    model = ctx.model
    inner = unwrap(model)
    example = ctx.require_example_input("routing")
    try:
        blocks, left_out = resolve_blocks(inner, config["blocks"], example, excluded=_side_modules(inner))
    except ArgumentError as err:
        raise err.under("blocks") from None
    for name in config["blocks"] if isinstance(config["blocks"], list) else [config["blocks"]]:
        ctx.record_match(str(name), [b for b in blocks if b == name or fnmatch.fnmatchcase(b, str(name))])
    config = {**config, "blocks": blocks}
    attach(model, make_routing_set(inner, cls.__name__, config, list(ctx.input_shape), ctx.name))
    routing = cls(model)
    routing.left_out = left_out  # type: ignore[attr-defined]
    ctx.add_parameters(routing.parameters())
    return routing


def _side_modules(model: nn.Module) -> List[str]:
    """Modules that are not the backbone's (every attachment's)."""
    return [name for name, m in model.named_children() if isinstance(m, Attachment)]
