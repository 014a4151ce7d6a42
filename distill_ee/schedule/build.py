"""Model-dependent validation and construction: Schedule -> components -> CompressionScheduler."""
from __future__ import annotations

import inspect
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import DistillEEError, ScheduleError
from ..policies.base import Policy
from ..policies.lr import LRPolicy
from ..registry import suggest
from ..scheduler import CompressionScheduler
from .names import expand_name, is_pattern
from .source import YamlPath
from .spec import POLICY_KINDS, ComponentSpec, PolicySpec, Schedule

WEIGHT_LIST_ARGS = ("weights",)
WEIGHT_DICT_ARGS = ("thresholds", "levels", "sensitivities", "reg_regims")
#: arguments the builder supplies itself rather than reading from YAML
INJECTED = ("name", "model", "optimizer")
_SPARSITY_ARGS = ("initial_sparsity", "final_sparsity", "desired_sparsity")


def build_scheduler(schedule: Schedule, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
                    example_input: Optional[torch.Tensor] = None) -> CompressionScheduler:
    """Check the schedule against ``model`` and build its components, policies and scheduler."""
    built: Dict[Tuple[str, str], Any] = {}
    for name, spec in schedule.components["early_exits"].items():
        built[("early_exits", name)] = _build_early_exit(schedule, spec, model, optimizer, example_input)
    scheduler = CompressionScheduler(model, optimizer)
    param_names = list(scheduler.masks)
    for section in ("pruners", "regularizers", "quantizers", "lr_schedulers", "extensions"):
        for name, spec in schedule.components[section].items():
            built[(section, name)] = _construct(schedule, spec, model, optimizer, param_names)
    for pspec in schedule.policies:
        component = built[(_section_of(pspec.kind), pspec.instance_name)]
        try:
            policy = _make_policy(schedule, pspec, component, param_names)
        except ScheduleError as exc:
            if exc.file is not None:
                raise
            raise _relocate(schedule, pspec.path + (pspec.kind, "args"), exc) from None
        scheduler.add_policy(policy, epochs=pspec.epochs, starting_epoch=pspec.starting_epoch,
                             ending_epoch=pspec.ending_epoch, frequency=pspec.frequency)
        validate = getattr(policy, "validate_schedule", None)
        if validate is not None:
            try:
                validate()
            except ScheduleError as exc:
                raise _relocate(schedule, pspec.path, exc) from None
    return scheduler


def _section_of(kind: str) -> str:
    return POLICY_KINDS[kind]


# --------------------------------------------------------------------------- early exits
def _build_early_exit(schedule: Schedule, spec: ComponentSpec, model: nn.Module,
                      optimizer: Optional[torch.optim.Optimizer], example_input: Optional[torch.Tensor]) -> Any:
    if example_input is None:
        raise schedule.error(spec.path, "early exits need an example input to infer branch shapes "
                                        "(pass example_input= to the schedule loader)")
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = model(example_input)
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise schedule.error(spec.path, "early exits need a classifier whose output is (batch, classes) logits")
    try:
        exits = spec.cls.from_config(dict(spec.kwargs), model, num_classes=int(out.shape[1]),
                                     input_shape=tuple(example_input.shape[1:]), name=spec.name)
    except ScheduleError as exc:
        raise _relocate(schedule, spec.path, exc) from None
    if optimizer is not None:
        params = list(exits.branch_parameters())
        if params:
            optimizer.add_param_group({"params": params})
    return exits


def _relocate(schedule: Schedule, base: YamlPath, exc: ScheduleError) -> ScheduleError:
    """Turn an error with a path relative to a component into one located in the schedule file."""
    rel = _parse_path(exc.path)
    return schedule.error(base + rel, exc.message, valid=exc.valid, suggestions=exc.suggestions)


def _parse_path(text: str) -> YamlPath:
    out: List[Any] = []
    for part in text.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        else:
            out.append(part)
    return tuple(out)


# --------------------------------------------------------------------------- components
def _construct(schedule: Schedule, spec: ComponentSpec, model: nn.Module,
               optimizer: Optional[torch.optim.Optimizer], param_names: List[str]) -> Any:
    kwargs = dict(spec.kwargs)
    for arg in WEIGHT_LIST_ARGS:
        if arg in kwargs:
            kwargs[arg] = _weight_list(schedule, spec.path + (arg,), kwargs[arg], param_names)
    for arg in WEIGHT_DICT_ARGS:
        if arg in kwargs:
            kwargs[arg] = _weight_dict(schedule, spec.path + (arg,), kwargs[arg], param_names)
    injected = {"name": spec.name, "model": model, "optimizer": optimizer}
    if spec.section == "lr_schedulers" and optimizer is None:
        raise schedule.error(spec.path, "an LR scheduler needs the optimizer (pass it to the schedule loader)")
    call_kwargs = _check_arguments(schedule, spec, kwargs, injected)
    try:
        return spec.cls(**call_kwargs)
    except DistillEEError as exc:
        if isinstance(exc, ScheduleError):
            raise _relocate(schedule, spec.path, exc) from None
        raise schedule.error(spec.path, str(exc)) from None
    except (TypeError, ValueError, KeyError) as exc:
        raise schedule.error(spec.path, f"{spec.class_name} rejected its arguments: {exc}") from None


def _signature(cls: Any) -> Tuple[Dict[str, inspect.Parameter], Dict[str, Any], bool]:
    sig = inspect.signature(cls.__init__)
    params = {n: p for n, p in sig.parameters.items()
              if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: fall back to no type checks
        hints = {}
    return params, hints, takes_var_kw


def _check_arguments(schedule: Schedule, spec: ComponentSpec, kwargs: Dict[str, Any],
                     injected: Dict[str, Any]) -> Dict[str, Any]:
    params, hints, takes_var_kw = _signature(spec.cls)
    user_params = [n for n in params if n not in INJECTED]
    for key in kwargs:
        if key not in params or key in INJECTED:
            if takes_var_kw and key not in INJECTED:
                continue
            raise schedule.error(spec.path + (key,), f"unknown argument of {spec.class_name}",
                                 suggestions=suggest(key, user_params), valid=user_params)
    for name, param in params.items():
        if name in INJECTED or param.default is not inspect.Parameter.empty:
            continue
        if name not in kwargs:
            raise schedule.error(spec.path, f"missing argument {name!r} of {spec.class_name}",
                                 valid=user_params)
    for key, value in kwargs.items():
        _check_value(schedule, spec.path + (key,), key, value, hints.get(key))
    call = {n: injected[n] for n in params if n in INJECTED}
    call.update(kwargs)
    return call


def _check_value(schedule: Schedule, path: YamlPath, key: str, value: Any, hint: Any) -> None:
    if key in _SPARSITY_ARGS:
        if not _is_number(value) or not 0.0 <= float(value) < 1.0:
            raise schedule.error(path, f"must be a number in [0, 1), got {value!r}")
    if hint is not None and not _matches(value, hint):
        raise schedule.error(path, f"must be {_describe(hint)}, got {type(value).__name__} {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(value: Any, hint: Any) -> bool:
    """A lenient runtime check of ``value`` against a type hint (unknown hints pass)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return _is_number(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args \
            else isinstance(value, (list, tuple))
    if origin in (dict, typing.Mapping) or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (list, tuple) or hint in (list, tuple):
        return "a list"
    if typing.get_origin(hint) is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------- weight names
def _weight_list(schedule: Schedule, path: YamlPath, names: Any, param_names: List[str]) -> List[str]:
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list):
        raise schedule.error(path, "must be a list of parameter names")
    out: List[str] = []
    for i, name in enumerate(names):
        out.extend(_match_weight(schedule, path + (i,), name, param_names))
    return out


def _weight_dict(schedule: Schedule, path: YamlPath, mapping: Any, param_names: List[str]) -> Dict[str, Any]:
    if not isinstance(mapping, dict):
        raise schedule.error(path, "must be a mapping of parameter names to values")
    out: Dict[str, Any] = {}
    for name, value in mapping.items():
        if name == "*":
            out["*"] = value
            continue
        for hit in _match_weight(schedule, path + (name,), name, param_names):
            out[hit] = value
    return out


def _match_weight(schedule: Schedule, path: YamlPath, name: Any, param_names: List[str]) -> List[str]:
    if not isinstance(name, str):
        raise schedule.error(path, f"a parameter name must be a string, got {name!r}")
    hits = expand_name(name, param_names)
    if not hits:
        what = "pattern" if is_pattern(name) else "parameter"
        raise schedule.error(path, f"{what} {name!r} matches no parameter of the model",
                             suggestions=suggest(name.replace("module.", ""), param_names),
                             valid=param_names)
    return hits


# --------------------------------------------------------------------------- policies
def _make_policy(schedule: Schedule, pspec: PolicySpec, component: Any, param_names: List[str]) -> Policy:
    if pspec.kind == "pruner":
        from ..policies.pruning import PruningPolicy
        args = dict(pspec.args)
        if "levels" in args:
            args["levels"] = _weight_dict(schedule, pspec.path + ("pruner", "args", "levels"), args["levels"],
                                          param_names)
        return PruningPolicy(component, args, name=pspec.instance_name)
    if pspec.kind == "regularizer":
        from ..policies.regularization import RegularizationPolicy
        return RegularizationPolicy(component, keep_mask=bool(pspec.args.get("keep_mask", False)),
                                    name=pspec.instance_name)
    if pspec.kind == "lr_scheduler":
        return LRPolicy(component, name=pspec.instance_name)
    if not isinstance(component, Policy):
        raise schedule.error(pspec.path, f"{pspec.instance_name!r} cannot be scheduled as a policy")
    if not component.name:
        component.name = pspec.instance_name
    return component
