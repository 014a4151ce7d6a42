"""Model-dependent validation and construction: Schedule -> components -> policies -> CompressionScheduler.

Every component builds itself the same way, whatever its section: its arguments are checked and converted by
the annotations of its constructor (``distill_ee.arguments``) against a ``BuildContext`` holding the model,
optimizer and example input; a class with a ``build(ctx, **arguments)`` classmethod is handed the context
(early exits attach their branches there). Components are built in section ``build_order`` (sections that add
modules first, so the others can name their parameters), then each policy entry wraps its component with
its section's policy class and its checked ``args``. Every error is relocated to the schedule file.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..arguments import ArgumentError, bind, signature_of
from ..context import BuildContext
from ..errors import DistillEEError, ScheduleError
from ..modules import first_line
from ..policies.base import Policy
from ..registry import sections
from ..scheduler import CompressionScheduler
from .source import YamlPath
from .spec import ComponentSpec, PolicySpec, Schedule

#: called with each component as it is built (``distill-ee check`` collects what names matched)
OnBuilt = Callable[[ComponentSpec, Any, BuildContext], None]


def build_scheduler(schedule: Schedule, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
                    example_input: Optional[torch.Tensor] = None,
                    on_built: Optional[OnBuilt] = None) -> CompressionScheduler:
    """Check the schedule against ``model`` and build its components, policies and scheduler."""
    ctx = BuildContext(model, optimizer, example_input)
    built: Dict[Tuple[str, str], Any] = {}
    for section in sorted(sections(), key=lambda s: (s.build_order, s.order)):
        for name, spec in schedule.components[section.name].items():
            instance = ctx.for_instance(name)
            built[(section.name, name)] = build_component(schedule, spec, instance)
            if on_built is not None:
                on_built(spec, built[(section.name, name)], instance)
    scheduler = CompressionScheduler(model, optimizer)
    for section in sections():
        for name in schedule.components[section.name]:
            scheduler.add_component(section.name, name, built[(section.name, name)])
    for pspec in schedule.policies:
        policy = make_policy(schedule, pspec, built[(pspec.section.name, pspec.instance_name)], ctx)
        if pspec.epochs is not None:
            scheduler.add_policy(policy, epochs=pspec.epochs)
        else:
            scheduler.add_policy(policy, starting_epoch=pspec.starting_epoch, ending_epoch=pspec.ending_epoch,
                                 frequency=pspec.frequency)
        try:
            policy.validate_window()
        except (ScheduleError, ArgumentError) as exc:
            raise relocate(schedule, pspec.path, exc) from None
        _check_overlap(schedule, pspec, scheduler)
        _dry_run(schedule, pspec, policy, model)
    return scheduler


def _dry_run(schedule: Schedule, pspec: PolicySpec, policy: Policy, model: nn.Module) -> None:
    """The policy's dry run on the model; what fails there is an error of its component, located there."""
    spec = schedule.components[pspec.section.name][pspec.instance_name]
    try:
        policy.dry_run(model)
    except (ArgumentError, ScheduleError) as exc:
        located = relocate(schedule, spec.path, exc)
        raise schedule.error(spec.path, f"does not fit the model: {located.message}") from None
    except Exception as exc:  # noqa: BLE001  (any failure of a component on this model is the schedule's)
        raise schedule.error(spec.path, f"{spec.class_name} fails when its policy runs "
                                        f"({type(exc).__name__}: {first_line(exc)})") from None


def _check_overlap(schedule: Schedule, pspec: PolicySpec, scheduler: CompressionScheduler) -> None:
    """Refuse a second policy entry of the same component in a common epoch when its policy forbids it."""
    new = scheduler.scheduled[-1]
    if type(new.policy).may_overlap:
        return
    for earlier, entry in zip(scheduler.scheduled[:-1], schedule.policies):
        same = (entry.section.name, entry.instance_name) == (pspec.section.name, pspec.instance_name)
        if same and earlier.window.overlaps(new.window):
            raise schedule.error(pspec.path, f"{pspec.kind} {pspec.instance_name!r} is already scheduled in a "
                                             f"common epoch by policies[{entry.index}]; one policy at a time may "
                                             "run it (make the epoch ranges disjoint)")


def build_component(schedule: Schedule, spec: ComponentSpec, ctx: BuildContext) -> Any:
    """Build one component from its schedule arguments; every problem located in the schedule file."""
    cls, owner = spec.cls, spec.class_name
    try:
        builder = getattr(cls, "build", None)
        if inspect.ismethod(builder):
            return builder(ctx, **bind(builder, spec.kwargs, owner=owner, names=ctx, skip=1))
        _require_optimizer(cls, owner, ctx)
        return cls(**bind(cls, spec.kwargs, owner=owner, names=ctx, supply=ctx.supply))
    except (ArgumentError, ScheduleError) as exc:
        raise relocate(schedule, spec.path, exc) from None
    except DistillEEError as exc:
        raise schedule.error(spec.path, str(exc)) from None
    except Exception as exc:  # noqa: BLE001  (a constructor may fail any way on bad arguments)
        raise schedule.error(spec.path, f"{owner} rejected its arguments ({type(exc).__name__}: "
                                        f"{first_line(exc)})") from None


def _require_optimizer(cls: Any, owner: str, ctx: BuildContext) -> None:
    param = signature_of(cls).parameters.get("optimizer")
    if ctx.optimizer is None and param is not None and param.default is inspect.Parameter.empty:
        raise ArgumentError(f"{owner} needs the optimizer (pass it to the schedule loader)")


def make_policy(schedule: Schedule, pspec: PolicySpec, component: Any, ctx: BuildContext) -> Policy:
    """The policy of one ``policies`` entry: its section's policy around the component, or the component."""
    section = pspec.section
    if section.policy is None:
        if not isinstance(component, Policy):
            raise schedule.error(pspec.path, f"{pspec.instance_name!r} cannot be scheduled as a policy")
        if not component.name:
            component.name = pspec.instance_name
        return component
    args_path = pspec.path + (pspec.kind, "args")
    args_class = section.policy.Args
    try:
        args = args_class(**bind(args_class, pspec.args, owner=f"the {pspec.kind} policy", names=ctx)) \
            if args_class is not None else None
        return section.policy.from_component(component, args, pspec.instance_name)
    except (ArgumentError, ScheduleError) as exc:
        raise relocate(schedule, args_path, exc) from None


def relocate(schedule: Schedule, base: YamlPath, exc: Exception) -> ScheduleError:
    """Turn an error located relative to a component (or an unlocated one) into one located in the file."""
    if isinstance(exc, ScheduleError) and exc.file is not None:
        return exc
    if isinstance(exc, ArgumentError):
        return schedule.error(base + exc.path, exc.message, valid=exc.valid, suggestions=exc.suggestions)
    if isinstance(exc, ScheduleError):
        return schedule.error(base + _parse_path(exc.path), exc.message, valid=exc.valid,
                              suggestions=exc.suggestions)
    return schedule.error(base, str(exc))


def _parse_path(text: str) -> YamlPath:
    out: List[Any] = []
    for part in text.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        elif part.startswith("[") and part.endswith("]") and part[1] in "'\"":
            out.append(part[2:-2])
        else:
            out.append(part)
    return tuple(out)
