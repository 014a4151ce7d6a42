"""RoutingSet: per-sample skipping of residual blocks, attached to a model as ``model.routing``.

Attaching a routing set (``distill_ee.attachment.attach``) leaves the model's module and parameter names as
they are: each routed block keeps its place and only its ``forward`` is routed through the set (the handles
``install`` returns undo it), which decides per sample whether the block runs (``keep_probability``, given by
SkipNet gates or BlockDrop's policy network). A skipped block passes its input on unchanged (the identity
shortcut). The structure step holds the routing class, its resolved configuration and the input shape::

    {"kind": "routing", "name": "skip", "class": "SkipGates", "config": {"blocks": [...], ...},
     "input_shape": [1, 28, 28]}

How a routed block runs:

* **Eval, real skipping** (default): at batch 1 a skipped block is not called; at batch N only the rows whose
  decision is "keep" go through the block (``index_select``, then ``index_copy`` back into the input), and a
  block nobody keeps is not called. The decision is the greedy one (keep probability > 0.5).
* **Eval, masked reference** (``reference = True``): every block runs on every row, and the output is the
  block's where kept and the input elsewhere. Real and masked give the same outputs to float tolerance.
* **Training**: the block runs on every row and its output is mixed with the input by the gate value g:
  ``g * block(x) + (1 - g) * x``. ``train_mode`` says what g is: ``soft`` (the probability), ``hard``
  (0/1 in the forward pass, the probability's gradient in the backward pass: straight-through), ``sample``
  (a Bernoulli sample, its log-probability recorded for REINFORCE) or ``greedy`` (0/1, no gradient). Every
  decision of a training forward pass is kept in ``trace`` for the routing policy's loss.
* Until a routing policy has run (``active`` False), and under ``dynamic.static_compute``, every block runs
  and no decision is computed: a backbone can be trained before its routing.

``active`` and the curriculum's ``decided`` count are the set's extra state, saved with the model.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.fx
from torch import nn

from ..arguments import ArgumentError, Checked, bind
from ..attachment import Attachment, Handle, InstanceAttributes, attachment_of, register_attachment
from ..attachment import replace_forward
from ..dynamic import OWNER_ATTR, DynamicComputation
from ..errors import CheckpointError, DistillEEError
from ..registry import ROUTING
from ..structure import sample_shape_problem
from .blocks import block_costs, block_facts

#: the attribute of the user's model holding its RoutingSet
ROUTING_ATTR = "routing"
#: the structure-step kind of attached routing
ROUTING_STEP = "routing"
#: a routed block's position among the routed blocks (depth order)
INDEX_ATTR = "_routing_index"
TRAIN_MODES = ("soft", "hard", "sample", "greedy")


@dataclass
class RouteRecord:
    """One block's decisions in a training forward pass (one row per sample that reached it)."""

    block: int
    #: keep probability given by the gate or policy network (with gradient)
    prob: torch.Tensor
    #: the probability actions were sampled from (BlockDrop's exploration bound); ``prob`` otherwise
    explored: torch.Tensor
    #: the gate value the block's output was mixed with
    gate: torch.Tensor
    #: log-probability of the sampled action (``sample`` mode only)
    log_prob: Optional[torch.Tensor]
    #: True when the curriculum keeps this block without a decision
    forced: bool


def _routing_step(value: Any) -> Dict[str, Any]:
    """A routing step's fields: its class, the class's arguments as its schedule gave them (checked by the
    class's own annotations, as when it was built) and the input shape."""
    if not isinstance(value, dict) or set(value) != {"class", "config", "input_shape"}:
        raise ArgumentError("a routing step holds `class`, `config` and `input_shape`")
    name = value["class"]
    if not isinstance(name, str) or name not in ROUTING:
        raise ArgumentError(f"unknown routing class {name!r}", ("class",), valid=ROUTING.names())
    problem = sample_shape_problem(value["input_shape"])
    if problem:
        raise ArgumentError(problem, ("input_shape",))
    config = value["config"]
    if not isinstance(config, dict) or not isinstance(config.get("blocks"), list) or not config["blocks"]:
        raise ArgumentError("the routing's configuration needs its `blocks`", ("config",))
    bind(ROUTING.get(name).build, config, owner=name, skip=1)
    return value


@register_attachment
class RoutingSet(Attachment, DynamicComputation):
    """Routed blocks (depth order), their share of the backbone's MACs, and how decisions are made."""

    kind = ROUTING_STEP
    attribute = ROUTING_ATTR
    noun = "routing"
    trained_by_policies = True
    step_schema = Annotated[Dict[str, Any], Checked("{class, config, input_shape}", _routing_step)]

    def __init__(self, blocks: Sequence[str], block_macs: Sequence[int], backbone_macs: int, *,
                 instance_name: str = "", class_name: str = ""):
        super().__init__()
        if not blocks:
            raise DistillEEError("routing needs at least one block")
        self.block_names: List[str] = list(blocks)
        self.block_macs: List[int] = [int(m) for m in block_macs]
        self.backbone_macs = int(backbone_macs)
        #: each block's share of the backbone's MACs (C_i of SkipNet's cost term)
        self.costs: List[float] = [m / max(self.backbone_macs, 1) for m in self.block_macs]
        self.instance_name = instance_name
        self.class_name = class_name
        #: the shape of one input sample (C, H, W), for measuring the blocks again
        self.input_shape: List[int] = []
        self.active = False
        self.decided = len(self.block_names)
        self.train_mode = "greedy"
        #: BlockDrop's exploration bound alpha: actions are sampled from alpha * p + (1 - alpha) * (1 - p)
        self.exploration = 1.0
        self.reference = False
        #: every routed block passes its input on without a decision (timing the network outside the blocks)
        self.skip_all = False
        #: keep the last training forward pass's input and output (for rewards and the greedy baseline)
        self.capture = False
        self.last_input: Optional[torch.Tensor] = None
        self.last_output: Optional[torch.Tensor] = None
        self.trace: List[RouteRecord] = []
        self.counting = False
        self.seen = [0] * len(self.block_names)
        self.executed = [0] * len(self.block_names)
        #: the resolved configuration the routing class built this set from (the structure step's)
        self.attached_config: Dict[str, Any] = {}

    # ----------------------------------------------------------------- the attachment protocol
    def install(self, model: nn.Module) -> List[Handle]:
        """Route every block's forward (and the model's) through this set."""
        blocks = [model.get_submodule(name) for name in self.block_names]
        for name, block in zip(self.block_names, blocks):
            if OWNER_ATTR in block.__dict__:
                raise DistillEEError(f"block {name!r} is routed already")
        handles: List[Handle] = []
        for k, block in enumerate(blocks):
            handles.append(InstanceAttributes(block, {OWNER_ATTR: self, INDEX_ATTR: k}))
            handles.append(replace_forward(block, types.MethodType(_routed_forward, block)))
        handles.append(model.register_forward_pre_hook(self._on_input))
        handles.append(model.register_forward_hook(self._on_output))
        handles.append(replace_forward(model, types.MethodType(_model_forward, model)))
        return handles

    def step_config(self) -> Dict[str, Any]:
        """The routing class, its resolved configuration and the input shape."""
        return {"class": self.class_name, "config": dict(self.attached_config), "input_shape": list(self.input_shape)}

    @classmethod
    def from_step(cls, model: nn.Module, step: Mapping[str, Any]) -> "RoutingSet":
        """The routing of a saved step, built for ``model`` (fresh weights)."""
        config = dict(step["config"])
        blocks = [str(b) for b in config["blocks"]]
        missing = [b for b in blocks if b not in dict(model.named_modules())]
        if missing:
            raise CheckpointError(f"the saved routing names block {missing[0]!r}, which this model lacks")
        return make_routing_set(model, str(step["class"]), {**config, "blocks": blocks},
                                [int(s) for s in step["input_shape"]], str(step.get("name", "")))

    def export_problem(self) -> Optional[str]:
        """Routed blocks decide in Python, which no exported graph does."""
        return "routed blocks (SkipNet/BlockDrop): their decisions run in Python; export a model without routing"

    @classmethod
    def describe_step(cls, step: Mapping[str, Any]) -> str:
        """``routing 'skip' (SkipGates)``."""
        return f"routing {step.get('name', '')!r} ({step.get('class')})"

    # ----------------------------------------------------------------- what subclasses give
    def keep_probability(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Probability (N,) of keeping block ``k`` for each row of its input ``x``."""
        raise NotImplementedError

    def decider_macs(self) -> List[int]:
        """MACs per sample of the decisions: one entry per block, plus one paid once per input, last."""
        raise NotImplementedError

    def config(self) -> Dict[str, Any]:
        """The plain configuration that rebuilds this set (the structure step's)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- state
    @property
    def num_blocks(self) -> int:
        """Number of routed blocks."""
        return len(self.block_names)

    def forced(self, k: int) -> bool:
        """True when the curriculum keeps block ``k`` without a decision (the first K - decided blocks)."""
        return k < self.num_blocks - self.decided

    def get_extra_state(self) -> Dict[str, Any]:
        """Whether routing is on, and how many blocks (the last ones) are decided."""
        return {"active": bool(self.active), "decided": int(self.decided)}

    def set_extra_state(self, state: Any) -> None:
        """Restore what ``get_extra_state`` returned."""
        if not isinstance(state, dict) or not isinstance(state.get("active"), bool) \
                or not isinstance(state.get("decided"), int) or not 0 <= state["decided"] <= self.num_blocks:
            raise CheckpointError(f"the saved routing state is malformed: {state!r}")
        self.active, self.decided = state["active"], state["decided"]

    def measure(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        """Re-measure the blocks' MACs and the backbone's on ``model`` (after thinning changed them)."""
        x = torch.zeros(1, *input_shape, device=next((p.device for p in model.parameters()), torch.device("cpu")))
        macs, total = block_costs(model, self.block_names, x)
        self.block_macs, self.backbone_macs = [int(m) for m in macs], int(total)
        self.costs = [m / max(self.backbone_macs, 1) for m in self.block_macs]

    def reset_counts(self) -> None:
        """Zero the per-block counts of rows seen and executed."""
        self.seen = [0] * self.num_blocks
        self.executed = [0] * self.num_blocks

    def routes(self) -> bool:
        """True when decisions are made now."""
        return self.active and self.dynamic

    # ----------------------------------------------------------------- model hooks
    def _on_input(self, module: nn.Module, args: Any) -> None:
        if args and isinstance(args[0], torch.Tensor) and not isinstance(args[0], torch.fx.Proxy):
            self.trace = []
            if self.capture and self.training:
                self.last_input = args[0]
            self.begin_rows(args[0])

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.capture and self.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self.last_output = output.detach()

    # ----------------------------------------------------------------- routing one block
    def route(self, block: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The routed block's output for ``x``."""
        forward = type(block).forward
        if self.skip_all and not isinstance(x, torch.fx.Proxy):
            return x
        if not self.routes() or isinstance(x, torch.fx.Proxy) or args or kwargs:
            return forward(block, x, *args, **kwargs)
        k = block.__dict__[INDEX_ATTR]
        if self.training:
            return self._route_training(k, block, forward, x)
        on = self._eval_decision(k, x)
        if self.reference:
            return _masked(on, forward(block, x), x)
        if x.shape[0] == 1:
            return forward(block, x) if bool(on) else x
        idx = on.nonzero().squeeze(1)
        n = idx.shape[0]
        if n == x.shape[0]:
            return forward(block, x)
        if n == 0:
            return x
        return x.index_copy(0, idx, forward(block, x.index_select(0, idx)))

    def _eval_decision(self, k: int, x: torch.Tensor) -> torch.Tensor:
        p = self.keep_probability(k, x)
        on = torch.ones_like(p, dtype=torch.bool) if self.forced(k) else p > 0.5
        if self.counting:
            self.seen[k] += int(on.shape[0])
            self.executed[k] += int(on.sum())
        return on

    def _route_training(self, k: int, block: nn.Module, forward: Any, x: torch.Tensor) -> torch.Tensor:
        p = self.keep_probability(k, x)
        explored, log_prob = p, None
        if self.forced(k):
            gate = torch.ones_like(p)
        elif self.train_mode == "soft":
            gate = p
        elif self.train_mode == "hard":
            gate = _StraightThrough.apply(p)
        elif self.train_mode == "sample":
            explored = (self.exploration * p + (1.0 - self.exploration) * (1.0 - p)).clamp(1e-6, 1.0 - 1e-6)
            dist = torch.distributions.Bernoulli(probs=explored)
            gate = dist.sample()
            log_prob = dist.log_prob(gate)
        else:
            gate = (p.detach() > 0.5).to(p.dtype)
        self.trace.append(RouteRecord(k, p, explored, gate, log_prob, self.forced(k)))
        out = forward(block, x)
        g = gate.view(-1, *([1] * (out.dim() - 1)))
        return g * out + (1.0 - g) * x

    def run_model(self, model: nn.Module, x: torch.Tensor) -> Any:
        """``model(x)``'s forward pass (the model's own forward routes through here; subclasses may regroup the
        batch, BlockDrop by pattern)."""
        return type(model).forward(model, x)

    def extra_repr(self) -> str:
        """The routed blocks."""
        return f"blocks={self.block_names}"


class _StraightThrough(torch.autograd.Function):
    """0/1 (p > 0.5) in the forward pass, the identity's gradient in the backward pass."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (p > 0.5).to(p.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


def _masked(on: torch.Tensor, full: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``full`` on the kept rows, ``x`` on the others (the masked reference)."""
    return torch.where(on.view(-1, *([1] * (full.dim() - 1))), full, x)


def _routed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The forward of a routed block: its RoutingSet decides."""
    return self.__dict__[OWNER_ATTR].route(self, *args, **kwargs)


def _model_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The forward of a model with routing: its RoutingSet runs it (one input tensor), as it is otherwise."""
    routing = routing_of(self)
    if routing is None or len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        return type(self).forward(self, *args, **kwargs)
    return routing.run_model(self, args[0])


# --------------------------------------------------------------------------- making and finding
def make_routing_set(model: nn.Module, class_name: str, config: Dict[str, Any], input_shape: List[int],
                     name: str) -> RoutingSet:
    """The RoutingSet the routing class ``class_name`` makes for ``model`` from its resolved ``config`` (not
    attached yet)."""
    if class_name not in ROUTING:
        raise DistillEEError(f"unknown routing class {class_name!r} (valid: {', '.join(ROUTING.names())})")
    facts = block_facts(model, list(config["blocks"]), input_shape)
    routing = ROUTING.get(class_name).make_set(model, facts, config, name)
    routing.input_shape = list(input_shape)
    routing.attached_config = dict(config)
    return routing.to(next((p.device for p in model.parameters()), torch.device("cpu")))


def routing_of(model: nn.Module) -> Optional[RoutingSet]:
    """The RoutingSet attached to ``model`` (None when it has none)."""
    return attachment_of(model, RoutingSet)
