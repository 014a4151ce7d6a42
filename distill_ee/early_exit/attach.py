"""Attaching exit branches to a live model for joint training, without renaming the backbone's parameters.

The branches become one submodule of the model, ``model.early_exits`` (an nn.ModuleDict: exit name ->
nn.Sequential), so the backbone's parameter names are unchanged and the branch weights travel with
``model.state_dict()``. A forward hook on each attach module runs its branch during the ordinary ``model(x)``
and keeps the logits until the loss asks for them. The hooks exist only while enabled (the policy enables
them in its due epochs), and even then they do nothing when autograd is off (validation), so branches
cost nothing outside training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import DistillEEError, ScheduleError
from ..registry import suggest
from .branch import build_branch, format_shape
from .spec import EarlyExitSpec

#: the attribute of the user's model that holds the branches
EXITS_ATTR = "early_exits"


@dataclass
class ExitSet:
    """Built exits of one model: names, resolved attach modules and branches, in depth order."""

    names: List[str]
    attach: List[str]
    branches: nn.ModuleDict
    num_classes: int
    input_shape: Tuple[int, ...]
    final_name: str = "final"

    def __len__(self) -> int:
        return len(self.names)

    def branch_list(self) -> List[nn.Module]:
        """The branch modules in exit order."""
        return [self.branches[n] for n in self.names]

    @property
    def output_names(self) -> List[str]:
        """Exit names followed by the final classifier's name."""
        return [*self.names, self.final_name]


# --------------------------------------------------------------------------- names
def strip_module_prefix(name: str) -> str:
    """Drop DataParallel's ``module`` path components (``module.layer1.0`` -> ``layer1.0``)."""
    return ".".join(part for part in name.split(".") if part != "module")


def resolve_module_name(model: nn.Module, name: str, path: str = "attach") -> str:
    """The model's own name for module ``name`` (tolerating ``module.`` prefixes); ScheduleError otherwise."""
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return name
    bare = strip_module_prefix(name)
    for cand in names:
        if strip_module_prefix(cand) == bare:
            return cand
    raise ScheduleError(f"no module named {name!r} in {type(model).__name__}", path=path, valid=names,
                        suggestions=suggest(bare, names))


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def example_input(model: nn.Module, input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    """A fixed pseudo-random batch on the model's device (a private generator: the global RNG is untouched)."""
    gen = torch.Generator().manual_seed(0)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn((batch, *input_shape), generator=gen, dtype=dtype)
    return x.to(model_device(model))


class eval_mode:
    """Context manager: every module in eval mode, each module's own mode restored afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes: List[Tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for module, mode in self.modes:
            module.training = mode


# --------------------------------------------------------------------------- probing the backbone
@dataclass
class AttachProbe:
    """What one dummy forward pass showed about an attach module."""

    output: torch.Tensor
    calls: int
    order: int
    mutated_later: bool


def probe_attach_points(model: nn.Module, names: Sequence[str], input_shape: Sequence[int]) -> List[AttachProbe]:
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


def _probe_of(name: str, rec: Dict[str, Any]) -> AttachProbe:
    out = rec.get("output")
    mutated = isinstance(out, torch.Tensor) and out._version != rec["version"]
    return AttachProbe(output=out, calls=rec["calls"], order=rec.get("order", -1), mutated_later=mutated)


# --------------------------------------------------------------------------- building
def build_exit_set(model: nn.Module, spec: EarlyExitSpec, *, num_classes: int,
                   input_shape: Sequence[int]) -> Tuple[ExitSet, List[bool]]:
    """Resolve attach names, check them against a dummy forward pass and build every branch.

    Returns the ExitSet and, per exit, whether the hook must copy the attach output (the backbone later
    modifies it in place, which would corrupt the branch's autograd graph).
    """
    attach = [resolve_module_name(model, e.attach, f"exits.{e.name}.attach") for e in spec.exits]
    _check_nesting(spec, attach)
    probes = probe_attach_points(model, attach, input_shape)
    _check_probes(spec, attach, probes)
    branches = nn.ModuleDict()
    for e, probe in zip(spec.exits, probes):
        branches[e.name] = build_branch(e.branch, probe.output, num_classes, exit_name=e.name,
                                        path=f"exits.{e.name}.branch")
    exit_set = ExitSet(names=spec.names, attach=attach, branches=branches, num_classes=num_classes,
                       input_shape=tuple(int(s) for s in input_shape), final_name=spec.final_name)
    return exit_set, [p.mutated_later for p in probes]


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


# --------------------------------------------------------------------------- hooks
class ExitAttachment:
    """The branches registered on a model plus the forward hooks that run them during ``model(x)``."""

    def __init__(self, model: nn.Module, exit_set: ExitSet, copy_input: Optional[Sequence[bool]] = None):
        if hasattr(model, EXITS_ATTR):
            raise DistillEEError(f"the model already has an attribute {EXITS_ATTR!r}: exits are attached once "
                                 f"per model")
        self.model = model
        self.exit_set = exit_set
        self.copy_input = list(copy_input) if copy_input is not None else [False] * len(exit_set)
        self._logits: List[Optional[torch.Tensor]] = [None] * len(exit_set)
        self._handles: List[Any] = []
        # where each branch reads from, kept with the branches for code that only sees the model (thinning)
        exit_set.branches.attach_points = dict(zip(exit_set.names, exit_set.attach))
        setattr(model, EXITS_ATTR, exit_set.branches)

    @property
    def enabled(self) -> bool:
        """True while the hooks are installed."""
        return bool(self._handles)

    def enable(self) -> None:
        """Install the hooks (idempotent)."""
        if self._handles:
            return
        modules = dict(self.model.named_modules())
        self._handles = [modules[a].register_forward_hook(self._hook(k))
                         for k, a in enumerate(self.exit_set.attach)]

    def disable(self) -> None:
        """Remove the hooks and drop kept logits: branches cost nothing in forward."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._logits = [None] * len(self.exit_set)

    def _hook(self, k: int) -> Callable:
        name, branches, copy = self.exit_set.names[k], self.exit_set.branches, self.copy_input[k]

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if torch.is_grad_enabled():
                self._logits[k] = branches[name](output.clone() if copy else output)
        return hook

    def pop_logits(self) -> List[torch.Tensor]:
        """The exits' logits of the last training forward pass, in exit order; forgotten afterwards."""
        logits, self._logits = self._logits, [None] * len(self.exit_set)
        missing = [n for n, l in zip(self.exit_set.names, logits) if l is None]
        if missing:
            state = "enabled" if self.enabled else "disabled (on_epoch_begin was not called)"
            raise DistillEEError(f"no logits for exit {missing[0]!r}: the exit hooks are {state}, or the forward pass "
                                 f"ran without autograd")
        return logits  # type: ignore[return-value]

    def detach(self) -> None:
        """Remove hooks and the branches attribute, leaving the model as it was."""
        self.disable()
        if getattr(self.model, EXITS_ATTR, None) is self.exit_set.branches:
            delattr(self.model, EXITS_ATTR)


def attach_exits(model: nn.Module, spec: EarlyExitSpec, *, num_classes: int,
                 input_shape: Sequence[int]) -> ExitAttachment:
    """Build the exits of ``spec`` for ``model`` and register them (hooks start disabled)."""
    if hasattr(model, EXITS_ATTR):
        raise DistillEEError(f"the model already has an attribute {EXITS_ATTR!r}: exits are attached once per model")
    exit_set, copy_input = build_exit_set(model, spec, num_classes=num_classes, input_shape=input_shape)
    return ExitAttachment(model, exit_set, copy_input)
