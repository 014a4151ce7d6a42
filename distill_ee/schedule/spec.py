"""Model-independent validation: YAML data -> a Schedule of component and policy specs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..components import load_components
from ..distiller_absent import absence_note
from ..registry import Registry, Section, UnknownNameError, sections, suggest
from ..input_files import input_label
from .source import LocatedDict, ScheduleSource, YamlPath, parse_yaml, read_yaml_text

EPOCH_KEYS = ["epochs", "starting_epoch", "ending_epoch", "frequency"]
#: the schedule format versions this loader reads (Distiller's)
VERSIONS = (1,)
#: the largest epoch number a schedule may name
MAX_EPOCH = 1_000_000
#: schedules are small text files; anything larger is refused unread
MAX_SCHEDULE_BYTES = 1 << 20


def top_level_keys() -> List[str]:
    """The keys a schedule may have at its top level, in order."""
    return ["version", *(s.name for s in sections()), "policies"]


def policy_kinds() -> Dict[str, Section]:
    """Policy key (``pruner`` ...) -> its section, in section order."""
    return {s.policy_key: s for s in sections()}


@dataclass
class ComponentSpec:
    """One named component of a section: its class and constructor arguments."""

    section: Section
    name: str
    class_name: str
    cls: Any
    kwargs: Dict[str, Any]
    path: YamlPath


@dataclass
class PolicySpec:
    """One entry of ``policies``: which component, with which args, on which epochs."""

    index: int
    kind: str
    section: Section
    instance_name: str
    args: Dict[str, Any]
    epochs: Optional[List[int]]
    starting_epoch: int
    ending_epoch: int
    frequency: int
    path: YamlPath


@dataclass
class Schedule:
    """A schedule validated independently of any model."""

    source: ScheduleSource
    version: int
    components: Dict[str, Dict[str, ComponentSpec]] = field(default_factory=dict)
    policies: List[PolicySpec] = field(default_factory=list)

    def error(self, path: YamlPath, message: str, **kwargs: Any) -> Exception:
        """A ScheduleError located at ``path`` of this schedule."""
        return self.source.error(path, message, **kwargs)


def read_schedule(path: str, *, stdin: bool = False) -> Schedule:
    """Read and validate a schedule file (``-``: standard input, where ``stdin`` allows it)."""
    text = read_yaml_text(path, "schedule", MAX_SCHEDULE_BYTES, stdin=stdin)
    return parse_schedule(text, file=input_label(path, stdin))


def parse_schedule(text: str, file: Optional[str] = None) -> Schedule:
    """Parse and validate schedule text (structure, class names, references, epoch ranges, types)."""
    load_components()
    src = parse_yaml(text, file)
    data = src.data
    top_level = top_level_keys()
    for key in data:
        if key not in top_level:
            absent = absence_note("schedule section", key)
            if absent:
                raise src.error((key,), f"unknown top-level section: {absent}")
            raise src.error((key,), "unknown top-level section", suggestions=suggest(key, top_level),
                            valid=top_level)
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise src.error(("version",), f"version must be an integer, got {version!r}")
    if version not in VERSIONS:
        raise src.error(("version",), f"unknown schedule version {version}", valid=list(VERSIONS))
    schedule = Schedule(src, version)
    for section in sections():
        schedule.components[section.name] = _components(src, section, data.get(section.name))
    policies = data.get("policies")
    if policies is None:
        policies = []
    if not isinstance(policies, list):
        raise src.error(("policies",), f"policies must be a list of policy entries, got {policies!r}")
    for i, entry in enumerate(policies):
        schedule.policies.append(_policy(schedule, i, entry))
    return schedule


def _components(src: ScheduleSource, section: Section, body: Any) -> Dict[str, ComponentSpec]:
    registry: Registry = section.registry
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise src.error((section.name,), f"{section.name} must be a mapping of instance names to "
                                         "{class: ..., ...}")
    specs = {}
    for name, conf in body.items():
        path = (section.name, name)
        if not isinstance(conf, dict):
            raise src.error(path, "must be a mapping with a 'class' key and the constructor arguments")
        if "class" not in conf:
            raise src.error(path, "missing 'class'", valid=registry.names() or None)
        class_name = conf["class"]
        if not isinstance(class_name, str):
            raise src.error(path + ("class",), f"class must be a name, got {class_name!r}")
        if len(registry) == 0:
            raise src.error(path + ("class",), f"no {registry.kind} classes are available in distill_ee")
        try:
            cls = registry.get(class_name)
        except UnknownNameError as exc:
            if exc.absent:
                raise src.error(path + ("class",), f"unknown {registry.kind} class: {exc.absent}") from None
            raise src.error(path + ("class",), f"unknown {registry.kind} class {class_name!r}",
                            suggestions=exc.suggestions, valid=registry.names()) from None
        kwargs = LocatedDict((k, v) for k, v in conf.items() if k != "class")
        kwargs.key_lines = dict(getattr(conf, "key_lines", {}))
        kwargs.line = getattr(conf, "line", None)
        specs[name] = ComponentSpec(section, name, class_name, cls, kwargs, path)
    return specs


def _policy(schedule: Schedule, index: int, entry: Any) -> PolicySpec:
    src = schedule.source
    path: YamlPath = ("policies", index)
    if not isinstance(entry, dict):
        raise src.error(path, "a policy must be a mapping such as {pruner: {instance_name: ...}, epochs: [...]}")
    by_kind = policy_kinds()
    kinds = [k for k in entry if k in by_kind]
    for key in entry:
        if key not in by_kind and key not in EPOCH_KEYS:
            raise src.error(path + (key,), "unknown policy key",
                            suggestions=suggest(key, [*by_kind, *EPOCH_KEYS]),
                            valid=[*by_kind, *EPOCH_KEYS])
    if len(kinds) != 1:
        raise src.error(path, f"a policy names exactly one of {', '.join(by_kind)}; found "
                              f"{', '.join(kinds) or 'none'}")
    kind = kinds[0]
    section = by_kind[kind]
    instance_name, args = _policy_target(schedule, path + (kind,), section, entry[kind])
    epochs, start, end, freq = _epochs(src, path, entry)
    return PolicySpec(index, kind, section, instance_name, args, epochs, start, end, freq, path)


def _policy_target(schedule: Schedule, path: YamlPath, section: Section, body: Any) -> Tuple[str, Dict[str, Any]]:
    src = schedule.source
    if not isinstance(body, dict):
        raise src.error(path, "must be a mapping with 'instance_name' (and optionally 'args')")
    for key in body:
        if key not in ("instance_name", "args"):
            raise src.error(path + (key,), "unknown key", suggestions=suggest(key, ["instance_name", "args"]),
                            valid=["instance_name", "args"])
    if "instance_name" not in body:
        raise src.error(path, "missing 'instance_name'")
    name = body["instance_name"]
    kind = section.policy_key
    defined = schedule.components[section.name]
    if not isinstance(name, str):
        raise src.error(path + ("instance_name",), f"instance_name must be the name of a {kind}, got {name!r}",
                        valid=list(defined))
    if name not in defined:
        raise src.error(path + ("instance_name",), f"names an undefined {kind} {name!r}",
                        suggestions=suggest(str(name), defined), valid=list(defined))
    args = body.get("args") or {}
    if not isinstance(args, dict):
        raise src.error(path + ("args",), "args must be a mapping")
    allowed = section.policy_args
    for key in args:
        if key not in allowed:
            raise src.error(path + ("args", key), f"unknown {kind} policy argument",
                            suggestions=suggest(str(key), allowed), valid=allowed)
    return name, args


def _int(src: ScheduleSource, path: YamlPath, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise src.error(path, f"must be an integer, got {value!r}")
    if value < minimum:
        raise src.error(path, f"must be at least {minimum}, got {value}")
    if value > MAX_EPOCH:
        raise src.error(path, f"must be at most {MAX_EPOCH:,}, got {value}")
    return value


def _epochs(src: ScheduleSource, path: YamlPath, entry: dict) -> Tuple[Optional[List[int]], int, int, int]:
    if "epochs" in entry:
        for key in ("starting_epoch", "ending_epoch", "frequency"):
            if key in entry:
                raise src.error(path + (key,), "give either 'epochs' or a starting_epoch/ending_epoch range, "
                                               "not both")
        epochs = entry["epochs"]
        if not isinstance(epochs, list) or not epochs:
            raise src.error(path + ("epochs",), "epochs must be a non-empty list of epoch numbers")
        values = [_int(src, path + ("epochs", i), e, 0) for i, e in enumerate(epochs)]
        return values, min(values), max(values) + 1, 1
    for key in ("starting_epoch", "ending_epoch"):
        if key not in entry:
            raise src.error(path, f"missing '{key}' (or give 'epochs: [...]')")
    start = _int(src, path + ("starting_epoch",), entry["starting_epoch"], 0)
    end = _int(src, path + ("ending_epoch",), entry["ending_epoch"], 0)
    freq = _int(src, path + ("frequency",), entry.get("frequency", 1), 1)
    if end <= start:
        raise src.error(path + ("ending_epoch",),
                        f"empty or reversed epoch range: starting_epoch {start}, ending_epoch {end} "
                        "(ending_epoch is exclusive and must be larger)")
    return None, start, end, freq
