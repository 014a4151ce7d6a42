"""The sweep file of ``distill-ee sweep``: its schema, the search space, substitution into the schedule and the
checks that refuse a bad space before any trial runs.

A sweep file::

    version: 1
    base:
      arch: lenet_mnist
      schedule: ../lenet_mnist.earlyexit.yaml        # relative to the sweep file
      flags: --epochs 2 --etrs 0.05 -b 32 --seed 0   # a string or a list
    space:
      early_exits.branchy.exits.exit1.loss_weight: [0.2, 0.5, 1.0]   # categorical
      early_exits.branchy.final_loss_weight: {low: 0.3, high: 1.0}   # float
      --lr: {low: 0.01, high: 0.1, log: true}                        # a flag
    objectives: {top1: maximize, macs_expected: minimize}
    trials: 6
    seed: 0
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 1}  # single objective only
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from ..errors import ConfigError, DistillEEError, ScheduleError
from ..registry import suggest
from ..schedule.source import PathKey, ScheduleSource, format_path, plain, read_yaml_file

TOP_KEYS = ("version", "base", "space", "objectives", "trials", "seed", "pruner", "study_name", "heartbeat_s")
BASE_KEYS = ("arch", "schedule", "flags")
RANGE_KEYS = ("low", "high", "step", "log")
PRUNER_KEYS = ("type", "n_startup_trials", "n_warmup_steps", "interval_steps")
DIRECTIONS = {"maximize": "maximize", "maximise": "maximize", "max": "maximize",
              "minimize": "minimize", "minimise": "minimize", "min": "minimize"}
#: flags the sweep sets itself for each trial (their argparse dests)
SWEEP_SET_DESTS = {"compress": "--compress", "out_dir": "-o/--out-dir", "name": "-n/--name", "arch": "--arch"}
Value = Union[None, bool, int, float, str]


@dataclass
class Param:
    """One entry of the space: a schedule YAML path or a flag, with its values."""

    key: str
    line: Optional[int]
    choices: Optional[List[Value]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    integer: bool = False

    @property
    def is_flag(self) -> bool:
        """Whether the entry is a command-line flag (``--lr``) rather than a schedule path."""
        return self.key.startswith("-")

    @property
    def path(self) -> Tuple[PathKey, ...]:
        """The schedule path as keys and list indexes."""
        return yaml_path(self.key)

    def extremes(self) -> List[Value]:
        """The values a check substitutes: each categorical value, or the range's ends."""
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]


@dataclass
class Objective:
    """A summary.json key (dotted for nested ones, e.g. ``timing.1.speedup``) and its direction."""

    key: str
    direction: str
    line: Optional[int]


@dataclass
class Pruner:
    """Optuna's MedianPruner settings."""

    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    line: Optional[int] = None


@dataclass
class Sweep:
    """A parsed sweep file."""

    file: str
    source: ScheduleSource
    arch: str
    schedule: Path
    flags: List[str]
    params: List[Param]
    objectives: List[Objective]
    trials: int
    seed: Optional[int] = None
    pruner: Optional[Pruner] = None
    study_name: str = "sweep"
    heartbeat_s: int = 10
    schedule_source: Optional[ScheduleSource] = field(default=None, repr=False)

    @property
    def directions(self) -> List[str]:
        """Optuna's directions, one per objective."""
        return [o.direction for o in self.objectives]

    def error(self, path: Sequence[PathKey], message: str, **kwargs: Any) -> ScheduleError:
        """A ScheduleError located in the sweep file."""
        return self.source.error(path, message, **kwargs)


def yaml_path(key: str) -> Tuple[PathKey, ...]:
    """``policies.0.pruner`` -> ``('policies', 0, 'pruner')``."""
    return tuple(int(part) if part.isdigit() else part for part in key.split("."))


def read_sweep(path: Union[str, Path]) -> Sweep:
    """Read and check the sweep file at ``path`` (its shape only: ``check_space`` checks the values)."""
    source = read_yaml_file(str(path), "sweep file")
    data = source.data
    source.expect_keys((), data, TOP_KEYS, "a sweep file is a mapping of sections")
    for key in ("base", "space", "objectives", "trials"):
        if key not in data:
            raise source.error((), f"the sweep file needs a {key!r} section", valid=TOP_KEYS)
    if data.get("version", 1) != 1:
        raise source.error(("version",), f"unknown version {data['version']!r}", valid=["1"])
    arch, schedule, flags = _base(source)
    sweep = Sweep(file=str(path), source=source, arch=arch, schedule=schedule, flags=flags,
                  params=_space(source), objectives=_objectives(source),
                  trials=_count(source, "trials", 1), seed=_optional_int(source, "seed"),
                  study_name=str(data.get("study_name", Path(path).name.split(".")[0])),
                  heartbeat_s=_count(source, "heartbeat_s", 1) if "heartbeat_s" in data else 10)
    sweep.pruner = _pruner(source, len(sweep.objectives), sweep.objectives[0].direction)
    sweep.schedule_source = read_yaml_file(str(schedule), "schedule")
    return sweep


def _base(source: ScheduleSource) -> Tuple[str, Path, List[str]]:
    base = source.data["base"]
    source.expect_keys(("base",), base, BASE_KEYS, "base is a mapping: arch, schedule, flags")
    for key in ("arch", "schedule"):
        if not isinstance(base.get(key), str) or not base[key]:
            raise source.error(("base", key), f"base needs {key}: a name", valid=BASE_KEYS)
    flags = base.get("flags", [])
    if isinstance(flags, str):
        try:
            flags = shlex.split(flags)
        except ValueError as exc:
            raise source.error(("base", "flags"), f"cannot split the flags: {exc}") from None
    if not isinstance(flags, list) or not all(isinstance(f, (str, int, float)) for f in flags):
        raise source.error(("base", "flags"), "flags is a string or a list of strings, e.g. --epochs 2 --lr 0.05")
    schedule = Path(base["schedule"])
    if not schedule.is_absolute():
        schedule = Path(source.file or ".").parent / schedule
    if not schedule.is_file():
        raise source.error(("base", "schedule"), f"no schedule file {str(schedule)!r} (paths are relative to "
                                                 "the sweep file)")
    return base["arch"], schedule, [str(f) for f in flags]


def _space(source: ScheduleSource) -> List[Param]:
    space = source.data["space"]
    if not isinstance(space, dict) or not space:
        raise source.error(("space",), "space is a mapping of schedule YAML paths and flags to values: a list "
                                       "(categorical) or {low, high[, step][, log]}")
    return [_param(source, key, value) for key, value in space.items()]


def _param(source: ScheduleSource, key: str, value: Any) -> Param:
    where = ("space", key)
    param = Param(key=key, line=source.line_of(where))
    if isinstance(value, list):
        if not value or not all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
            raise source.error(where, "a categorical is a non-empty list of plain values (numbers, names, "
                                      "true/false)")
        if len(set(map(repr, value))) != len(value):
            raise source.error(where, "a categorical lists each value once")
        param.choices = list(value)
        return param
    if not isinstance(value, dict):
        raise source.error(where, f"cannot read {value!r} as a space entry", valid=["[a, b, ...]",
                                                                                      "{low, high[, step][, log]}"])
    source.expect_keys(where, value, RANGE_KEYS, "a range is {low, high[, step][, log]}")
    for end in ("low", "high"):
        if not _number(value.get(end)):
            raise source.error([*where, end], f"a range needs {end}: a number", valid=RANGE_KEYS)
    step, log = value.get("step"), value.get("log", False)
    if step is not None and (not _number(step) or step <= 0):
        raise source.error([*where, "step"], f"step is a positive number, got {step!r}")
    if not isinstance(log, bool):
        raise source.error([*where, "log"], f"log is true or false, got {log!r}")
    if value["low"] >= value["high"]:
        raise source.error(where, f"low must be below high, got {value['low']} and {value['high']}")
    if log and (step is not None or value["low"] <= 0):
        raise source.error([*where, "log"], "a log range needs low > 0 and no step")
    param.low, param.high, param.step, param.log = value["low"], value["high"], step, log
    param.integer = all(isinstance(v, int) for v in (value["low"], value["high"], step if step is not None else 1))
    return param


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _objectives(source: ScheduleSource) -> List[Objective]:
    objectives = source.data["objectives"]
    if not isinstance(objectives, dict) or not objectives:
        raise source.error(("objectives",), "objectives maps summary.json keys to a direction, e.g. "
                                            "{top1: maximize, macs_expected: minimize}")
    out = []
    for key, direction in objectives.items():
        if str(direction).lower() not in DIRECTIONS:
            raise source.error(("objectives", key), f"unknown direction {direction!r}",
                               valid=["maximize", "minimize"])
        out.append(Objective(key, DIRECTIONS[str(direction).lower()], source.line_of(("objectives", key))))
    return out


def _count(source: ScheduleSource, key: str, low: int) -> int:
    value = source.data[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 100_000:
        raise source.error((key,), f"{key} is a whole number from {low} to 100000, got {value!r}")
    return value


def _optional_int(source: ScheduleSource, key: str) -> Optional[int]:
    value = source.data.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise source.error((key,), f"{key} is a whole number >= 0, got {value!r}")
    return value


def _pruner(source: ScheduleSource, objectives: int, direction: str) -> Optional[Pruner]:
    value = source.data.get("pruner")
    if value in (None, "none", False):
        return None
    where = ("pruner",)
    if value == "median":
        value = {"type": "median"}
    source.expect_keys(where, value, PRUNER_KEYS, "pruner is none, median or {type: median, n_startup_trials, "
                                                  "n_warmup_steps, interval_steps}")
    if value.get("type", "median") != "median":
        raise source.error([*where, "type"], f"unknown pruner {value['type']!r}", valid=["median"])
    if objectives > 1:
        raise source.error(where, "pruning applies only to single-objective studies (Optuna cannot prune a "
                                  "multi-objective trial); remove the pruner or keep one objective")
    if direction != "maximize":
        raise source.error(where, "the pruner compares each epoch's validation top-1, so the objective must be "
                                  "maximized")
    pruner = Pruner(line=source.line_of(where))
    for key in PRUNER_KEYS[1:]:
        if key in value:
            number = value[key]
            if not isinstance(number, int) or isinstance(number, bool) or number < (1 if key == "interval_steps"
                                                                                    else 0):
                raise source.error([*where, key], f"{key} is a whole number, got {number!r}")
            setattr(pruner, key, number)
    return pruner


# --- substitution ---------------------------------------------------------------------------------------------

def resolve(sweep: Sweep, param: Param) -> None:
    """A located error unless ``param``'s YAML path names a value present in the base schedule."""
    node: Any = sweep.schedule_source.data
    done: List[PathKey] = []
    for key in param.path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            valid = [str(k) for k in node] if isinstance(node, dict) else (
                [str(i) for i in range(len(node))] if isinstance(node, list) else [])
            at = format_path(done) or "the top level"
            raise sweep.error(("space", param.key), f"unknown YAML path: {at} of {sweep.schedule.name} has no "
                                                    f"{key!r}", valid=valid, suggestions=suggest(str(key), valid))
        done.append(key)


def substitute(schedule: Dict[str, Any], values: Dict[str, Value], params: Sequence[Param]) -> Dict[str, Any]:
    """A copy of the plain ``schedule`` with each schedule param's value set at its path."""
    out = plain(schedule)
    for param in params:
        if param.is_flag or param.key not in values:
            continue
        node = out
        *parents, last = param.path
        for key in parents:
            node = node[key]
        node[last] = values[param.key]
    return out


def schedule_text(sweep: Sweep, values: Dict[str, Value], header: str = "") -> str:
    """The base schedule with ``values`` substituted, as YAML text (``header`` lines first)."""
    data = substitute(plain(sweep.schedule_source.data), values, sweep.params)
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def flag_args(params: Sequence[Param], values: Dict[str, Value], switches: Sequence[str] = ()) -> List[str]:
    """The command-line arguments of the flag params (a switch in ``switches`` is given or left out)."""
    out: List[str] = []
    for param in params:
        if not param.is_flag or param.key not in values:
            continue
        value = values[param.key]
        if param.key in switches:
            out += [param.key] if value else []
        else:
            out += [param.key, str(value)]
    return out


def trial_argv(sweep: Sweep, values: Dict[str, Value], compress: str) -> List[str]:
    """The sample app's arguments for one trial (without -o and -n)."""
    return [*sweep.flags, *flag_args(sweep.params, values, switches(sweep)), "--arch", sweep.arch,
            "--compress", compress]


# --- checks ---------------------------------------------------------------------------------------------------

def switches(sweep: Sweep) -> List[str]:
    """The space's flags that take no value (``--deterministic``)."""
    from .args import build_parser
    actions = build_parser()._option_string_actions  # noqa: SLF001  (argparse has no public lookup)
    return [p.key for p in sweep.params if p.is_flag and p.key in actions and actions[p.key].nargs == 0]


def parse_flags(argv: List[str]) -> argparse.Namespace:
    """The sample app's flags parsed and checked (parse_args and check_args); ConfigError with argparse's
    message instead of its exit."""
    from .args import check_args, parse_args
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parse_args(argv)
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "bad flags"
        message = message.split("error: ", 1)[-1].rsplit(" (see ", 1)[0]
        raise ConfigError(message) from None
    check_args(args)
    return args


def check_space(sweep: Sweep, work_dir: Path) -> None:
    """Refuse, as one located line, a space no trial can run: unknown paths and flags, values the schedule or
    the flag checks refuse (each categorical value and each range end is tried)."""
    from .args import build_parser
    base_args = _check_base_flags(sweep)
    actions = build_parser()._option_string_actions  # noqa: SLF001
    for param in sweep.params:
        if param.is_flag:
            _check_flag(sweep, param, actions)
        else:
            resolve(sweep, param)
            _check_schedule_values(sweep, param, base_args, work_dir)


def _check_base_flags(sweep: Sweep) -> argparse.Namespace:
    from .args import build_parser
    actions = build_parser()._option_string_actions  # noqa: SLF001
    for flag in sweep.flags:
        name = flag.split("=", 1)[0]
        if name in actions and actions[name].dest in SWEEP_SET_DESTS:
            raise sweep.error(("base", "flags"), f"{name} is set by the sweep for each trial; leave it out")
    try:
        return parse_flags([*sweep.flags, "--arch", sweep.arch])
    except ConfigError as exc:
        raise sweep.error(("base", "flags"), str(exc)) from None


def _check_flag(sweep: Sweep, param: Param, actions: Dict[str, argparse.Action]) -> None:
    where = ("space", param.key)
    if param.key not in actions:
        valid = sorted(a for a in actions if a.startswith("--"))
        raise sweep.error(where, f"unknown flag {param.key} (the sample app's flags: distill-ee --help)",
                          suggestions=suggest(param.key, valid))
    if actions[param.key].dest in SWEEP_SET_DESTS:
        raise sweep.error(where, f"{param.key} is set by the sweep for each trial; it cannot be searched")
    is_switch = actions[param.key].nargs == 0
    for value in param.extremes():
        if is_switch and not isinstance(value, bool):
            raise sweep.error(where, f"{param.key} takes no value: search it as [true, false]",
                              valid=["true", "false"])
        argv = [*sweep.flags, *flag_args([param], {param.key: value}, [param.key] if is_switch else []),
                "--arch", sweep.arch]
        try:
            parse_flags(argv)
        except ConfigError as exc:
            raise sweep.error(where, f"the value {value!r} is refused: {exc}") from None


def _check_schedule_values(sweep: Sweep, param: Param, base_args: argparse.Namespace, work_dir: Path) -> None:
    """Build the schedule with each extreme value of ``param`` on the architecture, as ``distill-ee check``."""
    from ..atomic import atomic_write_text
    from .check import check
    from .datasets.from_arch import resolve_dataset
    dataset, _ = resolve_dataset(base_args.dataset, base_args.data, sweep.arch)
    work_dir.mkdir(parents=True, exist_ok=True)
    probe = work_dir / "space_check.yaml"
    try:
        for value in param.extremes():
            atomic_write_text(probe, schedule_text(sweep, {param.key: value}))
            try:
                check(str(probe), sweep.arch, dataset, base_args.data, base_args.epochs)
            except ScheduleError as exc:
                raise sweep.error(("space", param.key), f"the value {value!r} makes {sweep.schedule.name} "
                                                        f"invalid: {exc.path + ': ' if exc.path else ''}"
                                                        f"{exc.message}", valid=exc.valid,
                                  suggestions=exc.suggestions) from None
            except DistillEEError as exc:
                raise sweep.error(("space", param.key), f"the value {value!r} is refused: {exc}") from None
    finally:
        probe.unlink(missing_ok=True)


def summary_value(summary: Dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of summary.json (``timing.1.speedup``); KeyError when absent."""
    node: Any = summary
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def numeric_keys(summary: Dict[str, Any], prefix: str = "") -> List[str]:
    """The dotted keys of summary.json that hold numbers (what an objective may name)."""
    out = []
    for key, value in summary.items():
        if isinstance(value, dict):
            out += numeric_keys(value, f"{prefix}{key}.")
        elif _number(value):
            out.append(prefix + key)
    return out


def check_objectives(sweep: Sweep, summary: Dict[str, Any]) -> None:
    """A located error for an objective that is not a number in ``summary`` (the probe run's summary.json)."""
    valid = numeric_keys(summary)
    for objective in sweep.objectives:
        try:
            value = summary_value(summary, objective.key)
        except KeyError:
            value = None
        if not _number(value):
            raise sweep.error(("objectives", objective.key), f"{objective.key!r} is not a number in summary.json "
                                                             "of this command", valid=valid,
                              suggestions=suggest(objective.key, valid))
