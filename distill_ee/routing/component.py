"""Routing as a schedule component and as a structure step: build, attach, replay from a checkpoint.

A routing class of the ``routing`` section (``SkipGates``, ``BlockDrop``) builds itself from its arguments:
it resolves the blocks (``blocks.resolve_blocks``), measures what each costs and what it reads, attaches the
RoutingSet and gives its parameters to the optimizer. The structure step it records holds the resolved
configuration, so a checkpoint rebuilds the routing without the schedule::

    {"kind": "routing", "name": "skip", "class": "SkipGates", "config": {"blocks": [...], ...},
     "input_shape": [1, 28, 28]}

``Routing.of(model)`` gives the component's view of a model's routing (after training or a checkpoint load).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..arguments import ArgumentError
from ..context import BuildContext
from ..errors import CheckpointError, DistillEEError, ScheduleError
from ..modules import example_input, is_wrapper, unwrap
from ..pruning.masks import notify_parameters_replaced
from ..structure import STEP_KINDS, ReplayContext, Step, StepKind, swap_into_optimizer
from .blocks import block_costs, resolve_blocks
from .router import ROUTING_ATTR, ROUTING_STEP, RoutingSet, attach_routing, detach_routing, routing_of


@dataclass
class BlockFacts:
    """What a routing set is built from: the blocks, their MACs, the backbone's, and each block's input."""

    blocks: List[str]
    block_macs: List[int]
    backbone_macs: int
    channels: List[int]
    input_shape: List[int]


Maker = Callable[[nn.Module, BlockFacts, Dict[str, Any], str], RoutingSet]
_MAKERS: Dict[str, Maker] = {}


def register_set(class_name: str, maker: Maker) -> None:
    """How the routing class ``class_name`` makes its RoutingSet from facts and its configuration."""
    _MAKERS[class_name] = maker


class Routing:
    """The routing of one model: the RoutingSet it holds (looked up each time: a checkpoint may replace it)."""

    def __init__(self, model: nn.Module):
        if routing_of(unwrap(model)) is None:
            raise DistillEEError(f"{type(unwrap(model)).__name__} has no routing attached")
        self.model = model

    @classmethod
    def of(cls, model: nn.Module) -> Optional["Routing"]:
        """The routing of ``model`` (None when it has none)."""
        return cls(model) if routing_of(unwrap(model)) is not None else None

    @property
    def set(self) -> RoutingSet:
        """The model's RoutingSet."""
        found = routing_of(unwrap(self.model))
        if found is None:
            raise DistillEEError(f"{type(unwrap(self.model)).__name__} has no routing attached")
        return found

    @property
    def name(self) -> str:
        """The schedule instance name."""
        return self.set.instance_name

    @property
    def kind(self) -> str:
        """The routing class (``SkipGates``, ``BlockDrop``)."""
        return self.set.class_name

    def parameters(self) -> List[nn.Parameter]:
        """The gates' or policy network's parameters."""
        return list(self.set.parameters())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, blocks={self.set.block_names})"


def block_facts(model: nn.Module, blocks: List[str], input_shape: List[int]) -> BlockFacts:
    """Measure the blocks of ``model`` on an example input of ``input_shape``."""
    x = example_input(model, input_shape, batch=2)
    macs, total = block_costs(model, blocks, x)
    channels: Dict[str, int] = {}
    handles = [model.get_submodule(b).register_forward_pre_hook(
        lambda m, args, b=b: channels.__setitem__(b, int(args[0].shape[1]))) for b in blocks]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(x)
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    return BlockFacts(list(blocks), macs, total, [channels[b] for b in blocks], list(input_shape))


def build_routing(cls: type, ctx: BuildContext, config: Dict[str, Any]) -> Any:
    """Resolve the blocks of a schedule instance, attach the routing, add its parameters to the optimizer."""
    model = ctx.model
    if is_wrapper(model) and not isinstance(model, nn.DataParallel):
        raise DistillEEError("attach routing before wrapping the model in DistributedDataParallel")
    inner = unwrap(model)
    example = ctx.require_example_input("routing")
    try:
        blocks, left_out = resolve_blocks(inner, config["blocks"], example, excluded=_side_modules(inner))
    except ArgumentError as err:
        raise err.under("blocks") from None
    for name in config["blocks"] if isinstance(config["blocks"], list) else [config["blocks"]]:
        ctx.record_match(str(name), [b for b in blocks if b == name or fnmatch.fnmatchcase(b, str(name))])
    config = {**config, "blocks": blocks}
    attach(inner, cls.__name__, config, list(ctx.input_shape), ctx.name)
    routing = cls(model)
    routing.left_out = left_out  # type: ignore[attr-defined]
    ctx.add_parameters(routing.parameters())
    return routing


def _side_modules(model: nn.Module) -> List[str]:
    """Modules that are not the backbone's (exit branches, routing)."""
    return [n for n in ("early_exits", ROUTING_ATTR) if hasattr(model, n)]


def attach(model: nn.Module, class_name: str, config: Dict[str, Any], input_shape: List[int],
           name: str) -> RoutingSet:
    """Build the RoutingSet of ``class_name`` on ``model`` (already resolved ``config``) and attach it."""
    if class_name not in _MAKERS:
        raise DistillEEError(f"unknown routing class {class_name!r} (valid: {', '.join(sorted(_MAKERS))})")
    facts = block_facts(model, list(config["blocks"]), input_shape)
    routing = _MAKERS[class_name](model, facts, config, name)
    routing.input_shape = list(input_shape)
    routing.to(next((p.device for p in model.parameters()), torch.device("cpu")))
    step = {"kind": ROUTING_STEP, "name": name, "class": class_name, "config": dict(config),
            "input_shape": list(input_shape)}
    return attach_routing(model, routing, step)


class RoutingStep(StepKind):
    """Replays ``{"kind": "routing", "name", "class", "config", "input_shape"}``."""

    def replay(self, model: nn.Module, step: Step, ctx: ReplayContext) -> RoutingSet:
        """Attach the saved routing (fresh weights; the checkpoint's are loaded afterwards)."""
        inner = unwrap(model)
        try:
            config = dict(step["config"])
            blocks = [str(b) for b in config["blocks"]]
            missing = [b for b in blocks if b not in dict(inner.named_modules())]
            if missing:
                raise CheckpointError(f"the saved routing names block {missing[0]!r}, which this model lacks")
            routing = attach(inner, str(step["class"]), {**config, "blocks": blocks},
                             [int(s) for s in step["input_shape"]], str(step.get("name", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"malformed routing step ({err})") from None
        except ScheduleError as err:
            raise CheckpointError(f"the saved routing does not fit this model: {err.message}") from None
        except DistillEEError as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"the saved routing does not fit this model: {err}") from None
        swap_into_optimizer(ctx, ctx.detached.pop(f"routing:{step.get('name', '')}", None), list(routing.parameters()))
        notify_parameters_replaced(ctx.masks)
        return routing

    def undo(self, model: nn.Module, step: Step, ctx: ReplayContext) -> None:
        """Detach the routing; its optimizer group is refilled when it comes back."""
        removed = detach_routing(unwrap(model))
        if removed is not None:
            ctx.detached[f"routing:{step.get('name', '')}"] = list(removed.parameters())
        notify_parameters_replaced(ctx.masks)

    def state_prefixes(self, step: Step) -> List[str]:
        """The RoutingSet's keys: ``routing.``."""
        return [f"{ROUTING_ATTR}."]

    def describe(self, step: Step) -> str:
        """``routing 'skip' (SkipGates)``."""
        return f"routing {step.get('name', '')!r} ({step.get('class')})"


STEP_KINDS.add(ROUTING_STEP, RoutingStep())
