"""Building exit branches for a live model, without renaming the backbone's parameters.

``build_exits`` expands ``attach: builtin``, validates the configuration, probes the backbone with one dummy
batch (each attach module must run once and output a batched tensor, exits in forward order) and builds every
branch with its input size inferred, into an ``ExitSet``; ``attach_exits`` attaches it as
``model.early_exits`` (``distill_ee.attachment.attach``, which records the structure step that rebuilds it on a
fresh model) and ``detach_exits`` removes it again. Training runs the branches through forward hooks
(``hooks.ExitHooks``); inference cuts the model into stages (``multi_exit.MultiExitModel``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..attachment import attach, detach
from ..errors import ScheduleError
from ..inputs import InputLike
from ..modules import eval_mode, example_input, module_names, resolve_name, strip_module_prefix
from ..registry import suggest
from .branch import build_branch, format_shape
from .builtin import expand_builtin
from .deciders import build_decider
from .collaboration import CollaborativeBranch
from .exit_set import EXITS_ATTR, ExitSet
from .spec import EarlyExitSpec, parse_early_exit_config

#: the kind of the structure step that attaches exits
EXITS_STEP = EXITS_ATTR


# --------------------------------------------------------------------------- names
def resolve_module_name(model: nn.Module, name: str, path: str = "attach") -> str:
    """The model's own name for module ``name`` (tolerating ``module.`` prefixes); ScheduleError otherwise."""
    names = module_names(model)
    hit = resolve_name(name, names)
    if hit is None:
        raise ScheduleError(f"no module named {name!r} in {type(model).__name__}", path=path, valid=names,
                            suggestions=suggest(strip_module_prefix(name), names))
    return hit


# --------------------------------------------------------------------------- probing the backbone
@dataclass
class AttachProbe:
    """What one dummy forward pass showed about an attach module."""

    output: torch.Tensor
    calls: int
    order: int
    mutated_later: bool


def probe_attach_points(model: nn.Module, names: Sequence[str], input_shape: InputLike) -> List[AttachProbe]:
    """Run one dummy batch and record each attach module's output, call count, call order and whether the
    backbone later changes that output in place."""
    modules = dict(model.named_modules())
    records: Dict[str, Dict[str, Any]] = {n: {"calls": 0} for n in names}
    counter = [0]

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            rec = records[name]
            rec["calls"] += 1
            if rec["calls"] == 1:
                rec["order"], rec["output"] = counter[0], output
                rec["version"] = output._version if isinstance(output, torch.Tensor) else None
            counter[0] += 1
        return hook

    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(model, input_shape))
    finally:
        for h in handles:
            h.remove()
    return [_probe_of(n, records[n]) for n in names]


def forward_positions(model: nn.Module, names: Sequence[str], input_shape: InputLike) -> List[int]:
    """Where each module runs in one forward pass (its first call's rank; modules that do not run last)."""
    resolved = [resolve_module_name(model, n) for n in names]
    probes = probe_attach_points(model, list(dict.fromkeys(resolved)), input_shape)
    rank = {n: p.order if p.calls else 1 << 30 for n, p in zip(dict.fromkeys(resolved), probes)}
    return [rank[n] for n in resolved]


def _probe_of(name: str, rec: Dict[str, Any]) -> AttachProbe:
    out = rec.get("output")
    mutated = isinstance(out, torch.Tensor) and out._version != rec["version"]
    return AttachProbe(output=out, calls=rec["calls"], order=rec.get("order", -1), mutated_later=mutated)


# --------------------------------------------------------------------------- building
def build_exit_set(model: nn.Module, spec: EarlyExitSpec, *, num_classes: int,
                   input_shape: InputLike, name: str = "") -> ExitSet:
    """Resolve attach names, check them against a dummy forward pass and build every branch.

    The ExitSet notes, per exit, whether the training hook must copy the attach output (the backbone later
    modifies it in place, which would corrupt the branch's autograd graph).
    """
    attach = [resolve_module_name(model, e.attach, f"exits.{e.name}.attach") for e in spec.exits]
    _check_nesting(spec, attach)
    probes = probe_attach_points(model, attach, input_shape)
    _check_probes(spec, attach, probes)
    branches = {e.name: build_branch(e.branch, probe.output, num_classes, exit_name=e.name,
                                     path=f"exits.{e.name}.branch")
                for e, probe in zip(spec.exits, probes)}
    if spec.forward_transfer:
        branches = {name: CollaborativeBranch(b, num_classes, name) if k else b
                    for k, (name, b) in enumerate(branches.items())}
    return ExitSet(branches, attach, num_classes=num_classes, input_shape=input_shape, criteria=spec.criteria(),
                   thresholds=spec.thresholds(), final_name=spec.final_name, stages=spec.stages,
                   copy_input=[p.mutated_later for p in probes], instance_name=name,
                   deciders=_deciders(spec, num_classes, probes[0].output.device), config=spec.to_config())


def build_exits(model: nn.Module, config: Mapping[str, Any], *, num_classes: int, input_shape: InputLike,
                name: str = "") -> ExitSet:
    """The ExitSet of an ``early_exits`` configuration (``class`` ignored, ``attach: builtin`` expanded) for
    ``model``, validated against it and not attached yet."""
    config = expand_builtin({k: v for k, v in dict(config).items() if k != "class"}, model,
                            order=lambda names: forward_positions(model, names, input_shape))
    return build_exit_set(model, parse_early_exit_config(config), num_classes=num_classes,
                          input_shape=input_shape, name=name)


def _deciders(spec: EarlyExitSpec, num_classes: int, device: torch.device) -> Dict[str, nn.Module]:
    """Each exit's learned decider, when the instance's criterion is learned (``gate``, ``learned``)."""
    head = spec.decider_head
    if head is None:
        return {}
    return {e.name: build_decider(head, num_classes, exit_name=e.name, path=f"{spec.decider_block}.head").to(device)
            for e in spec.exits}


def _check_nesting(spec: EarlyExitSpec, attach: List[str]) -> None:
    for i, (e, a) in enumerate(zip(spec.exits, attach)):
        for other, b in zip(spec.exits[:i], attach[:i]):
            if a == b:
                raise ScheduleError(f"exits {other.name!r} and {e.name!r} both attach to {a!r}",
                                    path=f"exits.{e.name}.attach")
            if a.startswith(b + ".") or b.startswith(a + "."):
                inner, outer = (a, b) if a.startswith(b + ".") else (b, a)
                raise ScheduleError(f"{inner!r} is inside {outer!r}; exits cannot attach inside another exit's "
                                    f"module (the model could not be cut into stages there)",
                                    path=f"exits.{e.name}.attach")


def _check_probes(spec: EarlyExitSpec, attach: List[str], probes: List[AttachProbe]) -> None:
    previous: Optional[Tuple[str, str, int]] = None
    for e, a, p in zip(spec.exits, attach, probes):
        path = f"exits.{e.name}.attach"
        if p.calls == 0:
            raise ScheduleError(f"module {a!r} is not run by the model's forward pass", path=path)
        if p.calls > 1:
            raise ScheduleError(f"module {a!r} runs {p.calls} times in one forward pass (a shared module); attach "
                                f"to a module that runs once, e.g. its parent block", path=path)
        if not isinstance(p.output, torch.Tensor) or p.output.dim() < 2:
            got = type(p.output).__name__ if not isinstance(p.output, torch.Tensor) else format_shape(p.output.shape)
            raise ScheduleError(f"module {a!r} must output a batched tensor to feed an exit, got {got}", path=path)
        if previous is not None and p.order < previous[2]:
            raise ScheduleError(f"exit {e.name!r} attaches to {a!r}, which runs before {previous[1]!r} of the "
                                f"previous exit {previous[0]!r}; list exits in forward order", path=path)
        previous = (e.name, a, p.order)


# --------------------------------------------------------------------------- attaching
def attach_exits(model: nn.Module, spec: EarlyExitSpec, *, num_classes: int, input_shape: InputLike,
                 name: str = "") -> ExitSet:
    """Build the exits of ``spec`` for ``model`` and attach them as ``model.early_exits`` (step recorded)."""
    return attach(model, build_exit_set(model, spec, num_classes=num_classes, input_shape=input_shape, name=name))


def detach_exits(model: nn.Module) -> Optional[ExitSet]:
    """Remove ``model.early_exits`` and its structure step; returns the removed ExitSet (None if none)."""
    return detach(model, ExitSet)
