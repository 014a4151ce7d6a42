"""Cutting a backbone into stages at the exits' attach points, so inference can stop after any stage.

Stage k runs the backbone from the end of stage k-1 up to and including exit k's attach module; the last
stage runs the rest and returns the final logits. Stages exchange values through numbered *slots* of a
shared environment (slot 0 is the model input): each stage reads some slots and writes others, and after
exit k only the slots still needed later (``carry[k]``, the residual branches included) are shrunk to the
samples that go on. The stage modules share their layers and parameters with the original model.

Two ways to cut:

* ``split_traced`` (default): ``torch.fx.symbolic_trace`` with the attach modules kept as leaves, then the
  graph nodes are split in their original execution order. Non-tensor values (``x.size(0)``) and attribute
  reads are recomputed in the stage that uses them instead of being carried, so shapes follow the shrinking
  batch.
* ``split_sequential`` (fallback for models fx cannot trace, the ``stages:`` key): the model is taken to be
  the composition of the listed top-level children, in order (``flatten`` may be listed when the forward
  flattens between children that do not).

Either way the cut model is checked once against the original on a dummy batch.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx
from torch import nn

from ..attachment import layers_only
from ..dynamic import OWNER_ATTR, begin_rows, owners, static_compute
from ..errors import DistillEEError
from ..fx_trace import FxTracer, UntraceableError, trace_module
from .exit_set import ExitSet
from ..inputs import InputLike
from ..modules import eval_mode, example_input, first_line, strip_module_prefix

_log = logging.getLogger(__name__)

_STAGES_HINT = ("give `stages:` (the model's top-level child modules in forward order, e.g. "
                "[features, avgpool, flatten, classifier]) to cut it without tracing")


@dataclass
class StagePlan:
    """How stages exchange values: the slots each stage reads and writes, and what survives each exit."""

    num_slots: int
    inputs: List[List[int]]
    outputs: List[List[int]]
    attach: List[int]
    carry: List[List[int]]
    free: List[List[int]]
    result: int

    @property
    def num_exits(self) -> int:
        """Number of early exits (stages - 1)."""
        return len(self.attach)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-python form (ints and lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "StagePlan":
        """Inverse of ``to_dict``."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class SequentialStage(nn.Sequential):
    """Children run in order; returns a one-element tuple, like a traced stage."""

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:  # type: ignore[override]
        """Apply the children in order."""
        for module in self:
            x = module(x)
        return (x,)


# --------------------------------------------------------------------------- entry point
def split_model(model: nn.Module, attach: Sequence[str], input_shape: InputLike,
                stages: Optional[Sequence[str]] = None) -> Tuple[List[nn.Module], StagePlan]:
    """Stage modules and their plan for ``model`` cut after each module in ``attach`` (depth order).

    Cutting and checking run with every routed block running (the cut does not depend on routing)."""
    with static_compute(model):
        if stages is not None:
            modules, plan = split_sequential(model, stages, attach)
        else:
            modules, plan = split_traced(model, attach, input_shape)
        check_stages(model, modules, plan, input_shape, "stages listed in `stages:`" if stages is not None
                     else "traced stages")
    return modules, plan


def run_stages(modules: Sequence[nn.Module], plan: StagePlan, x: torch.Tensor) -> Tuple[List[torch.Tensor], Any]:
    """Every stage on the whole batch: (attach outputs per exit, final output)."""
    env: List[Any] = [None] * plan.num_slots
    env[0] = x
    begin_rows(owners(modules), x)
    attach_out: List[torch.Tensor] = []
    for k, stage in enumerate(modules):
        outs = stage(*[env[i] for i in plan.inputs[k]])
        for slot, value in zip(plan.outputs[k], outs):
            env[slot] = value
        if k < plan.num_exits:
            attach_out.append(env[plan.attach[k]])
    return attach_out, env[plan.result]


_GIVEN_HINT = ("the listed children, run one after the other, must compute the model's forward pass: check "
               "that they are in forward order, that none is missing, and that `flatten` is listed where the "
               "forward flattens")


def check_stages(model: nn.Module, modules: Sequence[nn.Module], plan: StagePlan, input_shape: InputLike,
                 how: str) -> None:
    """Raise DistillEEError unless the stages reproduce ``model(x)`` on a dummy batch."""
    x = example_input(model, input_shape, batch=3)
    hint = _GIVEN_HINT if "`stages:`" in how else _STAGES_HINT
    with eval_mode(model), torch.no_grad():
        expected = model(x)
        if isinstance(expected, torch.Tensor) and not bool(torch.isfinite(expected).all()):
            raise DistillEEError(f"{type(model).__name__}'s own output on a dummy batch is not finite (NaN or "
                                 "inf): its weights are not finite, so its stages cannot be checked")
        try:
            _, got = run_stages(modules, plan, x)
        except Exception as err:  # noqa: BLE001  (any failure of a cut model is reported the same way)
            raise DistillEEError(f"the {how} of {type(model).__name__} fail on a dummy batch "
                                 f"({first_line(err)}); {hint}") from None
    same = (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and got.shape == expected.shape
            and torch.allclose(got, expected, rtol=1e-4, atol=1e-5))
    if not same:
        raise DistillEEError(f"the {how} of {type(model).__name__} do not reproduce its output on a dummy "
                             f"batch; {hint}")


# --------------------------------------------------------------------------- sequential fallback
def split_sequential(model: nn.Module, stages: Sequence[str],
                     attach: Sequence[str]) -> Tuple[List[nn.Module], StagePlan]:
    """Cut a model that is the composition of its listed top-level children."""
    children = {n: c for n, c in model.named_children() if not isinstance(c, ExitSet)}
    layers: List[nn.Module] = []
    names: List[str] = []
    for name in stages:
        bare = strip_module_prefix(name)
        if bare in children:
            layers.append(children[bare])
        elif bare == "flatten":
            layers.append(nn.Flatten(1))
        else:
            raise DistillEEError(f"`stages:` names {name!r}, which is not a top-level child of "
                                 f"{type(model).__name__} (children: {', '.join(children)})")
        names.append(bare)
    cuts = []
    for a in attach:
        bare = strip_module_prefix(a)
        if bare not in names:
            raise DistillEEError(f"exit attach point {a!r} is not one of the `stages:` entries ({', '.join(names)}); "
                                 f"with `stages:` exits attach to listed top-level children only")
        cuts.append(names.index(bare))
    if cuts != sorted(set(cuts)):
        raise DistillEEError("exit attach points must follow the order of `stages:`")
    bounds = [-1, *cuts, len(layers) - 1]
    modules = [SequentialStage(*layers[bounds[i] + 1: bounds[i + 1] + 1]) for i in range(len(bounds) - 1)]
    k = len(attach)
    plan = StagePlan(num_slots=k + 2, inputs=[[s] for s in range(k + 1)], outputs=[[s + 1] for s in range(k + 1)],
                     attach=[s + 1 for s in range(k)], carry=[[s + 1] for s in range(k)],
                     free=[[s] for s in range(k)], result=k + 1)
    return modules, plan


# --------------------------------------------------------------------------- torch.fx
class ExitTracer(FxTracer):
    """The shared tracer with the attach modules kept whole (one call_module node each), routed blocks kept whole
    (their routing decides at run time), and torch's modules holding an attach point traced through."""

    def __init__(self, leaves: Sequence[str]):
        super().__init__(leaves=leaves, through=leaves, whole=lambda m: OWNER_ATTR in m.__dict__)


@dataclass
class _Kind:
    """What a graph value is, seen at two batch sizes."""

    tensor: bool
    batched: bool = False
    static: bool = False
    container: bool = False


class _Recorder(torch.fx.Interpreter):
    """Runs a graph and records each node's tensor shape (or value type)."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.seen: Dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        """Run ``n`` and record what it produced."""
        value = super().run_node(n)
        if isinstance(value, torch.Tensor):
            self.seen[n] = tuple(value.shape)
        elif isinstance(value, (tuple, list, dict)):
            self.seen[n] = "container"
        else:
            self.seen[n] = "scalar"
        return value


def trace(model: nn.Module, leaves: Sequence[str]) -> torch.fx.GraphModule:
    """``model`` traced with ``leaves`` kept as call_module nodes, the model left as it was; DistillEEError if it
    cannot be traced."""
    try:
        # traced in eval mode: code reading ``self.training`` is baked in as inference code
        with eval_mode(model), layers_only(model):
            return trace_module(model, ExitTracer(leaves), concrete_args=plain_defaults(model))
    except UntraceableError as err:
        raise DistillEEError(f"cannot trace {err.model} with torch.fx ({err.reason}{err.where}); "
                             f"{_STAGES_HINT}") from None


def _argument_names(model: nn.Module) -> Optional[List[str]]:
    """The names of the forward's arguments after the batch (None where the signature cannot be read)."""
    try:
        return list(inspect.signature(model.forward).parameters)[1:]
    except (TypeError, ValueError):
        return None


def plain_defaults(model: nn.Module) -> Dict[str, Any]:
    """The forward's arguments after the batch whose defaults are plain values (None, bool, number, string):
    traced as those constants, so a test such as ``if attn_mask is not None`` takes the default's branch."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params if p.kind in named and p.default is not inspect.Parameter.empty
            and (p.default is None or isinstance(p.default, (bool, int, float, str)))}


def _value_kinds(gm: torch.fx.GraphModule, input_shape: InputLike) -> Dict[torch.fx.Node, _Kind]:
    """Run the traced graph at batch sizes 2 and 3 and classify every node's value."""
    runs = []
    for batch in (2, 3):
        recorder = _Recorder(gm)
        with eval_mode(gm), torch.no_grad():
            recorder.run(example_input(gm, input_shape, batch=batch))
        runs.append(recorder.seen)
    kinds = {}
    for node, a in runs[0].items():
        b = runs[1].get(node)
        if isinstance(a, tuple) and isinstance(b, tuple):
            batched = len(a) >= 1 and len(b) == len(a) and a[0] == 2 and b[0] == 3 and a[1:] == b[1:]
            kinds[node] = _Kind(tensor=True, batched=batched, static=a == b)
        else:
            kinds[node] = _Kind(tensor=False, container="container" in (a, b))
    return kinds


def split_traced(model: nn.Module, attach: Sequence[str],
                 input_shape: InputLike) -> Tuple[List[nn.Module], StagePlan]:
    """Cut a torch.fx-traceable model into stages ending at each attach module (the forward's arguments after
    the batch held at their defaults)."""
    gm = trace(model, attach)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise DistillEEError(f"{type(model).__name__}.forward takes no input; staging needs one (the batch)")
    held = hold_defaults(gm, placeholders[1:], type(model).__name__, _argument_names(model))
    nodes = list(graph.nodes)
    output = next(n for n in nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, torch.fx.Node):
        raise DistillEEError(f"{type(model).__name__}.forward must return the logits tensor")
    cut_nodes = [_attach_node(nodes, a, model) for a in attach]
    position = {n: i for i, n in enumerate(nodes)}
    if [position[n] for n in cut_nodes] != sorted(position[n] for n in cut_nodes):
        raise DistillEEError("the exits' attach modules do not run in the order of the exits")
    kinds = _held_value_kinds(gm, input_shape, held, type(model).__name__)
    return _Splitter(gm, nodes, placeholders[0], result, cut_nodes, kinds).split()


def hold_defaults(gm: torch.fx.GraphModule, extra: Sequence[torch.fx.Node], model_name: str,
                  names: Optional[Sequence[str]] = None) -> List[str]:
    """Replace the forward's arguments after the batch by their default values in ``gm``; their names (``names``
    where fx renamed them, as it does the ones traced as constants).

    The stages are fed the batch alone, so an argument without a default is refused (one line naming it)."""
    named = list(names) if names is not None and len(names) == len(extra) else [str(n.target) for n in extra]
    for node in extra:
        if not node.args:
            raise DistillEEError(f"{model_name}.forward argument {node.target!r} has no default: the stages are "
                                 f"fed the batch alone and hold every other argument at its default; give "
                                 f"{node.target!r} a default or wrap the model so its forward takes the batch only")
    for node in extra:
        default = node.args[0]
        for user in list(node.users):
            user.args = torch.fx.node.map_arg(user.args, lambda n, ph=node, v=default: v if n is ph else n)
            user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda n, ph=node, v=default: v if n is ph else n)
        gm.graph.erase_node(node)
    if extra:
        gm.recompile()
        _log.info("%s.forward: staged with %s held at their defaults", model_name,
                  ", ".join(f"{name}={n.args[0]!r}" for name, n in zip(named, extra)))
    return named


def _held_value_kinds(gm: torch.fx.GraphModule, input_shape: InputLike, held: Sequence[str],
                      model_name: str) -> Dict[torch.fx.Node, _Kind]:
    """``_value_kinds``; with arguments held at their defaults, a graph that fails on them is one line."""
    if not held:
        return _value_kinds(gm, input_shape)
    try:
        return _value_kinds(gm, input_shape)
    except Exception as err:  # noqa: BLE001  (the traced graph used a held argument as a tensor)
        raise DistillEEError(f"{model_name} traced with {', '.join(held)} held at their defaults fails on a dummy "
                             f"batch ({first_line(err)}): only plain defaults (None, bool, number, string) are "
                             f"traced as constants, any other as if it were given; {_STAGES_HINT}") from None


def _attach_node(nodes: List[torch.fx.Node], name: str, model: nn.Module) -> torch.fx.Node:
    hits = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(hits) != 1:
        raise DistillEEError(f"module {name!r} appears {len(hits)} times in the traced graph of "
                             f"{type(model).__name__} (exits need a module that runs once); {_STAGES_HINT}")
    return hits[0]


class _Splitter:
    """The node bookkeeping of one split: stage of each node, what each stage reads, writes and carries."""

    def __init__(self, gm: torch.fx.GraphModule, nodes: List[torch.fx.Node], placeholder: torch.fx.Node,
                 result: torch.fx.Node, cut_nodes: List[torch.fx.Node], kinds: Dict[torch.fx.Node, _Kind]):
        self.gm, self.placeholder, self.result, self.cut_nodes, self.kinds = gm, placeholder, result, cut_nodes, kinds
        self.position = {n: i for i, n in enumerate(nodes)}
        self.num_stages = len(cut_nodes) + 1
        cut_pos = [self.position[n] for n in cut_nodes]
        self.stage_of: Dict[torch.fx.Node, int] = {placeholder: -1}
        # nodes recomputed where used instead of carried: attribute reads and non-tensor values
        self.recompute: Set[torch.fx.Node] = set()
        self.members: List[List[torch.fx.Node]] = [[] for _ in range(self.num_stages)]
        for n in nodes:
            if n.op in ("placeholder", "output"):
                continue
            self.stage_of[n] = sum(p < self.position[n] for p in cut_pos)
            kind = kinds.get(n, _Kind(tensor=True))
            if n.op == "get_attr" or not (kind.tensor or kind.container):
                self.recompute.add(n)
            else:
                self.members[self.stage_of[n]].append(n)
        self._deps: Dict[torch.fx.Node, Set[torch.fx.Node]] = {}

    def deps(self, node: torch.fx.Node) -> Set[torch.fx.Node]:
        """Carried (non-recomputed) nodes that computing ``node``'s arguments reads."""
        if node in self._deps:
            return self._deps[node]
        out: Set[torch.fx.Node] = set()
        for arg in node.all_input_nodes:
            if arg in self.recompute:
                out |= self.deps(arg)
            else:
                out.add(arg)
        self._deps[node] = out
        return out

    def external_inputs(self, stage: int) -> List[torch.fx.Node]:
        """Values from earlier stages (or the input) that ``stage`` reads, in graph order."""
        needed: Set[torch.fx.Node] = set()
        for n in self.members[stage]:
            needed |= self.deps(n)
        if stage == self.num_stages - 1:
            needed |= {self.result} if self.result not in self.recompute else self.deps(self.result)
        return sorted((n for n in needed if self.stage_of[n] < stage), key=self._order)

    def _order(self, n: torch.fx.Node) -> int:
        return -1 if n is self.placeholder else self.position[n]

    def split(self) -> Tuple[List[nn.Module], StagePlan]:
        """Build the stage GraphModules and their slot plan."""
        if self.result in self.recompute or not self.kinds[self.result].batched:
            raise DistillEEError("the model's output is not a batched tensor; it cannot be cut into stages")
        inputs = [self.external_inputs(s) for s in range(self.num_stages)]
        needed_later = [set().union(*inputs[s + 1:]) for s in range(self.num_stages)]
        outputs = [self._outputs(s, needed_later[s]) for s in range(self.num_stages)]
        live = [sorted((n for n in needed_later[s] if self.stage_of[n] <= s), key=self._order)
                for s in range(self.num_stages - 1)]
        self._check_carried(live)
        slot = {self.placeholder: 0}
        for outs in outputs:
            for n in outs:
                slot.setdefault(n, len(slot))
        exits = range(self.num_stages - 1)
        plan = StagePlan(
            num_slots=len(slot),
            inputs=[[slot[n] for n in ins] for ins in inputs],
            outputs=[[slot[n] for n in outs] for outs in outputs],
            attach=[slot[n] for n in self.cut_nodes],
            carry=[[slot[n] for n in live[k] if self.kinds[n].batched] for k in exits],
            free=[self._freed(k, live, outputs, slot) for k in exits],
            result=slot[self.result])
        modules = [self._stage_module(s, inputs[s], outputs[s]) for s in range(self.num_stages)]
        return modules, plan

    def _outputs(self, stage: int, needed_later: Set[torch.fx.Node]) -> List[torch.fx.Node]:
        """What ``stage`` returns: its values read by later stages and its attach output (the last stage: the
        model's output)."""
        if stage == self.num_stages - 1:
            return [self.result]
        outs = [n for n in self.members[stage] if n in needed_later]
        if self.cut_nodes[stage] not in outs:
            outs.append(self.cut_nodes[stage])
        return outs

    def _freed(self, k: int, live: List[List[torch.fx.Node]], outputs: List[List[torch.fx.Node]],
               slot: Dict[torch.fx.Node, int]) -> List[int]:
        """Slots filled after stage k (carried in, or written by it) that no later stage reads."""
        held = set(live[k - 1]) if k > 0 else {self.placeholder}
        held |= set(outputs[k])
        return sorted(slot[n] for n in held - set(live[k]))

    def _check_carried(self, live: List[List[torch.fx.Node]]) -> None:
        for k, values in enumerate(live):
            for n in values:
                kind = self.kinds[n]
                if not (kind.batched or kind.static):
                    what = "is a container" if kind.container else "does not have the batch as first dimension"
                    raise DistillEEError(f"value {n.name!r} is needed after exit {k + 1} but {what}, so it cannot "
                                         f"follow a shrinking batch; {_STAGES_HINT}")

    def _stage_module(self, stage: int, inputs: List[torch.fx.Node], outputs: List[torch.fx.Node]) -> nn.Module:
        graph = torch.fx.Graph()
        env: Dict[torch.fx.Node, torch.fx.Node] = {}
        for n in inputs:
            env[n] = graph.placeholder(n.name)

        def lookup(arg: torch.fx.Node) -> torch.fx.Node:
            if arg not in env:
                if arg not in self.recompute:
                    raise RuntimeError(f"staging bug: {arg.name!r} is not available in stage {stage}")
                env[arg] = graph.node_copy(arg, lookup)
            return env[arg]

        for n in self.members[stage]:
            env[n] = graph.node_copy(n, lookup)
        graph.output(tuple(lookup(n) for n in outputs))
        graph.lint()
        return torch.fx.GraphModule(self.gm, graph, f"Stage{stage}")
