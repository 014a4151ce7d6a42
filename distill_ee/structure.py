"""Structure steps: the ordered record of what changed a model's structure, replayed on a fresh model.

A component that changes a model's structure (attaching exit branches, thinning layers; later quantizing,
adding gates) records a *structure step* on the model: a dict of plain data and tensors with a ``kind``::

    {"kind": "early_exits", "name": "branchy", "config": {...}, "num_classes": 10, "input_shape": [1, 28, 28]}
    {"kind": "thinning", "recipe": {"modules": {...}, "tensors": {...}}}

The steps live, oldest first, in the model's ``structure_steps`` list (``structure_steps(model)``); a
checkpoint stores them, and ``reconcile_steps`` gives a freshly built model the same structure before the
saved weights are loaded. Each kind registers a ``StepKind`` in ``STEP_KINDS`` that knows how to replay it;
kinds that a schedule adds when it is built (exits) can also be undone and redone, so that a checkpoint
thinned before those steps existed still loads under the schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .errors import CheckpointError
from .modules import first_line, unwrap
from .registry import Registry

Step = Dict[str, Any]
#: the model attribute holding its structure steps, oldest first
STRUCTURE_ATTR = "structure_steps"
STEP_KINDS = Registry("structure step", named_by_schedules=False)
#: the most structure steps a checkpoint may list (each thinning adds one)
MAX_STEPS = 10_000
#: a sample's shape in a structure step: at most this many dimensions, each and their product bounded (the
#: step allocates an example batch of it)
MAX_SAMPLE_DIMS = 4
MAX_SAMPLE_SIZE = 65536
MAX_SAMPLE_VALUES = 1 << 24


def sample_shape_problem(shape: Any) -> Optional[str]:
    """What is wrong with ``shape`` as one sample's shape in a structure step (None: nothing)."""
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= MAX_SAMPLE_DIMS or not all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SAMPLE_SIZE for s in shape):
        return (f"must be a list of 1 to {MAX_SAMPLE_DIMS} sizes from 1 to {MAX_SAMPLE_SIZE} (one sample's "
                f"shape), got {shape!r}")
    values = 1
    for s in shape:
        values *= s
    if values > MAX_SAMPLE_VALUES:
        return f"holds {values:,} values per sample (at most {MAX_SAMPLE_VALUES:,}), got {list(shape)}"
    return None


@dataclass
class ReplayContext:
    """What replaying a step may update besides the model: the optimizer's parameters and the masks."""

    optimizer: Optional[torch.optim.Optimizer] = None
    masks: Optional[Mapping[str, Any]] = None
    #: parameters of steps undone during a rebase, by step name: what their replay takes the place of
    detached: Dict[str, List[Any]] = field(default_factory=dict)


class StepKind:
    """How one kind of structure step is replayed on a model (subclasses register in ``STEP_KINDS``)."""

    def check(self, step: Step) -> None:
        """CheckpointError (one line) unless ``step``'s fields have the types and bounds a replay needs; called
        on every saved step before any is replayed, so that nothing is built from a malformed checkpoint."""

    def replay(self, model: nn.Module, step: Step, ctx: ReplayContext) -> Any:
        """Apply ``step`` to ``model`` (and record it there); returns what it created, if anything."""
        raise NotImplementedError

    def undo(self, model: nn.Module, step: Step, ctx: ReplayContext) -> None:
        """Remove what ``step`` added (only kinds a schedule adds at build time can)."""
        raise CheckpointError(f"a {step.get('kind')!r} structure step cannot be undone")

    def redo(self, model: nn.Module, step: Step, ctx: ReplayContext) -> Any:
        """Apply an undone step again, on the model's new structure."""
        return self.replay(model, step, ctx)

    def state_prefixes(self, step: Step) -> List[str]:
        """Prefixes of the ``state_dict`` keys of the modules the step adds."""
        return []

    def describe(self, step: Step) -> str:
        """A few words naming the step, for messages."""
        return str(step.get("kind"))


def structure_steps(model: nn.Module) -> List[Step]:
    """The structure steps applied to ``model`` so far, oldest first (what a checkpoint stores)."""
    return list(getattr(unwrap(model), STRUCTURE_ATTR, []))


def record_step(model: nn.Module, step: Step) -> None:
    """Append ``step`` to the model's structure steps."""
    if not isinstance(step.get("kind"), str):
        raise ValueError("a structure step needs a 'kind'")
    inner = unwrap(model)
    if not isinstance(getattr(inner, STRUCTURE_ATTR, None), list):
        setattr(inner, STRUCTURE_ATTR, [])
    getattr(inner, STRUCTURE_ATTR).append(step)


def forget_step(model: nn.Module, step: Step) -> None:
    """Remove ``step`` (this very dict) from the model's structure steps."""
    steps = getattr(unwrap(model), STRUCTURE_ATTR, [])
    steps[:] = [s for s in steps if s is not step]


def step_kind(step: Any) -> StepKind:
    """The registered kind of ``step``; CheckpointError for a malformed or unknown step."""
    if not isinstance(step, Mapping) or not isinstance(step.get("kind"), str):
        raise CheckpointError("a structure step is a mapping with a 'kind'")
    if step["kind"] not in STEP_KINDS:
        raise CheckpointError(f"unknown structure step kind {step['kind']!r} (valid: "
                              f"{', '.join(STEP_KINDS.names())}); is the plugin that made it installed?")
    return STEP_KINDS.get(step["kind"])


def same_step(a: Any, b: Any) -> bool:
    """True when two steps (or values inside them) are equal, tensors compared by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_step(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_step(x, y) for x, y in zip(a, b))
    return bool(a == b)


@dataclass
class Reconciled:
    """What ``reconcile_steps`` did: objects the replayed steps created and the state keys it may lack."""

    replayed: List[Any]
    #: prefixes of state_dict keys of modules the model has but the saved steps do not (added by a schedule)
    new_prefixes: List[str]


def reconcile_steps(model: nn.Module, saved: Sequence[Step], ctx: Optional[ReplayContext] = None, *,
                    input_shape: Any = None) -> Reconciled:
    """Give ``model`` the structure ``saved`` describes, keeping steps it has that ``saved`` lacks; every step
    that records an input shape must record ``input_shape`` (the checkpoint's, when it has one).

    Steps of ``saved`` beyond what the model already has in common with it are replayed. The model may have
    steps of its own beyond that point: exits a schedule attached when it was built. Those are undone first,
    then either replayed at their saved position (when ``saved`` has them too) or redone afterwards on the
    new structure (when it does not: a checkpoint thinned before the schedule added exits).
    """
    ctx = ctx or ReplayContext()
    if not isinstance(saved, (list, tuple)):
        raise CheckpointError(f"the checkpoint's structure steps must be a list, got {type(saved).__name__}")
    if len(saved) > MAX_STEPS:
        raise CheckpointError(f"the checkpoint lists {len(saved):,} structure steps (at most {MAX_STEPS:,})")
    kinds = [step_kind(s) for s in saved]
    for i, (step, kind) in enumerate(zip(saved, kinds), start=1):
        try:
            kind.check(step)
        except CheckpointError as err:
            raise CheckpointError(f"structure step {i} of {len(saved)} ({kind.describe(step)}): {err}") from None
    check_input_shapes(saved, input_shape)
    current = structure_steps(model)
    common = 0
    while common < min(len(current), len(saved)) and same_step(current[common], saved[common]):
        common += 1
    own, rest = current[common:], list(saved[common:])
    for step in own:
        _check_not_conflicting(step, rest)
    missing = [step for step in own if not any(same_step(step, r) for r in rest)]
    if own and rest:
        for step in reversed(own):
            step_kind(step).undo(model, step, ctx)
    replayed = []
    for i, (step, kind) in enumerate(zip(rest, kinds[common:]), start=common + 1):
        try:
            replayed.append(kind.replay(model, step, ctx))
        except CheckpointError as err:
            raise CheckpointError(f"structure step {i} of {len(saved)} ({kind.describe(step)}): {err}") from None
        except RuntimeError as err:  # torch's own: the model cannot run the step's example input
            raise CheckpointError(f"structure step {i} of {len(saved)} ({kind.describe(step)}): cannot be rebuilt "
                                  f"on this model ({first_line(err)})") from None
    if own and rest:
        for step in missing:
            step_kind(step).redo(model, step, ctx)
    prefixes = [p for step in missing for p in step_kind(step).state_prefixes(step)]
    return Reconciled(replayed, prefixes)


def check_input_shapes(saved: Sequence[Step], expected: Any = None) -> None:
    """CheckpointError unless every step that records the input shape records the same one (``expected``, the
    checkpoint's own, when given): they were all built on one model."""
    shapes = [(i, list(step["input_shape"])) for i, step in enumerate(saved, start=1)
              if isinstance(step, Mapping) and isinstance(step.get("input_shape"), (list, tuple))]
    want = list(expected) if isinstance(expected, (list, tuple)) and not sample_shape_problem(expected) else None
    for i, shape in shapes:
        first = want if want is not None else shapes[0][1]
        if shape != first:
            source = "the checkpoint's" if want is not None else f"step {shapes[0][0]}'s"
            raise CheckpointError(f"structure step {i} of {len(saved)} records the input shape {shape}, not "
                                  f"{source} {first}: the steps were not built on one model")


def _check_not_conflicting(step: Step, saved: Sequence[Step]) -> None:
    """A step of the model's own is either one of the saved steps or absent from them, not another version."""
    for other in saved:
        if other.get("kind") == step.get("kind") and other.get("name") is not None \
                and other.get("name") == step.get("name") and not same_step(other, step):
            raise CheckpointError(f"the model has {step_kind(step).describe(step)} configured differently from "
                                  f"the checkpoint's; resume with the schedule the checkpoint was trained with")


def replay_steps(model: nn.Module, steps: Sequence[Step], ctx: Optional[ReplayContext] = None) -> List[Any]:
    """Replay ``steps`` on a fresh ``model`` (one without structure steps); returns what they created."""
    if structure_steps(model):
        raise CheckpointError("replay structure steps on a fresh model (this one has structure steps already)")
    return reconcile_steps(model, steps, ctx).replayed


def swap_into_optimizer(ctx: ReplayContext, old: Optional[List[nn.Parameter]], new: List[nn.Parameter]) -> None:
    """Put the parameters a replayed step made where those of its undone version were (or into a new group)."""
    optimizer = ctx.optimizer
    if optimizer is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if old:
        old_ids = {id(p) for p in old}
        for group in optimizer.param_groups:
            if any(id(p) in old_ids for p in group["params"]):
                group["params"] = [p for p in group["params"] if id(p) not in old_ids] + list(new)
                break
        for p in old:
            optimizer.state.pop(p, None)
    elif not any(id(p) in held for p in new):
        optimizer.add_param_group({"params": list(new)})
