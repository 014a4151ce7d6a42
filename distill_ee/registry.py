"""Name -> class registries for everything a schedule may name, and the schedule's sections.

Built-in classes register themselves with a decorator when their module is imported (``components.py``
lists those modules); third-party classes do the same from a module named by an entry point of the
``distill_ee.plugins`` group.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

from .distiller_absent import absence_note
from .errors import DistillEEError

T = TypeVar("T")


class UnknownNameError(DistillEEError, LookupError):
    """A name that is not registered; carries close names and the full list of valid ones."""

    def __init__(self, kind: str, name: str, valid: List[str]):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        self.suggestions = suggest(name, self.valid)
        self.absent = absence_note(kind, name)
        super().__init__(self.describe())

    def describe(self) -> str:
        """One-line message: what was asked, close names, what is valid (or, for a Distiller feature not
        implemented here, what to use instead)."""
        msg = f"unknown {self.kind} {self.name!r}"
        if self.absent:
            return f"{msg}: {self.absent}"
        if self.suggestions:
            msg += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        shown = self.valid if len(self.valid) <= 25 else self.valid[:25] + ["..."]
        return msg + f" (valid: {', '.join(shown)})"


def suggest(name: str, valid: Iterable[str], n: int = 3) -> List[str]:
    """Close matches for ``name`` among ``valid``, case-insensitively."""
    valid = list(valid)
    lower = {v.lower(): v for v in valid}
    hits = difflib.get_close_matches(str(name).lower(), list(lower), n=n, cutoff=0.6)
    return [lower[h] for h in hits]


class Registry:
    """A typed map from names (and aliases) to registered objects, filled by a decorator.

    ``named_by_schedules`` marks the registries whose names a schedule file may write (listed by
    ``registries()``, documented in the generated class table).
    """

    def __init__(self, kind: str, *, named_by_schedules: bool = True):
        self.kind = kind
        self.named_by_schedules = named_by_schedules
        self._entries: Dict[str, Any] = {}
        self._aliases: Dict[str, str] = {}
        _ALL.append(self)

    def register(self, name: Optional[str] = None, *, aliases: Iterable[str] = ()) -> Callable[[T], T]:
        """Decorator that registers a class or function under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            self.add(name or obj.__name__, obj, aliases=aliases)
            return obj

        return deco

    def add(self, name: str, obj: Any, *, aliases: Iterable[str] = ()) -> None:
        """Register ``obj`` under ``name`` and optional aliases; a second registration of a name is an error."""
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def remove(self, name: str) -> None:
        """Unregister ``name`` and its aliases (a plugin being unloaded, a test cleaning up)."""
        name = self.canonical(name)
        del self._entries[name]
        for alias in [a for a, target in self._aliases.items() if target == name]:
            del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (resolving aliases); raises UnknownNameError."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(self.kind, name, self.names() + list(self._aliases))

    def get(self, name: str) -> Any:
        """The object registered under ``name`` or an alias of it; raises UnknownNameError."""
        return self._entries[self.canonical(name)]

    def aliases(self, name: str) -> List[str]:
        """The other names ``name`` is registered under, sorted."""
        return sorted(a for a, target in self._aliases.items() if target == self.canonical(name))

    def names(self, pattern: str = "*") -> List[str]:
        """Registered (non-alias) names matching a shell-style pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


#: every registry made, in creation order (``registries()``)
_ALL: List["Registry"] = []


def registries() -> List["Registry"]:
    """Every registry whose names a schedule may write, in the order they were made."""
    return [r for r in _ALL if r.named_by_schedules]


PRUNERS = Registry("pruner")
REGULARIZERS = Registry("regularizer")
QUANTIZERS = Registry("quantizer")
LR_SCHEDULERS = Registry("lr_scheduler")
EXTENSIONS = Registry("extension")
EARLY_EXITS = Registry("early-exit class")
EXIT_CRITERIA = Registry("exit criterion")
BRANCH_LAYERS = Registry("branch layer")
ROUTING = Registry("routing")
#: attachment kind -> Attachment subclass (``distill_ee.attachment``); named by checkpoints, not schedules
ATTACHMENTS = Registry("attachment kind", named_by_schedules=False)


@dataclass(frozen=True)
class Section:
    """A top-level section of a schedule: its components' registry and how a policy entry schedules them.

    ``policy`` is the Policy class whose ``from_component(component, args, name)`` wraps an instance of the
    section for a policy entry, with ``policy.Args`` (a dataclass of annotated fields, or None) declaring the
    entry's ``args``; without ``policy`` the component is itself the policy and takes no ``args``.
    Sections are listed by ``order``; components are built by ``build_order`` (lower first: sections that
    add modules come before those that name the model's parameters).
    """

    name: str
    policy_key: str
    registry: Registry
    order: int
    policy: Optional[Any] = None
    build_order: int = 100

    @property
    def policy_args(self) -> List[str]:
        """Names of the ``args`` a policy entry of this section may give, in declaration order."""
        fields = getattr(getattr(self.policy, "Args", None), "__dataclass_fields__", None) or {}
        return list(fields)


SECTIONS = Registry("schedule section", named_by_schedules=False)


def add_section(section: Section) -> Section:
    """Register a schedule section (done by the module that owns its policy)."""
    SECTIONS.add(section.name, section)
    return section


def sections() -> List[Section]:
    """Every registered section in the order schedules list them."""
    return sorted((SECTIONS.get(n) for n in SECTIONS.names()), key=lambda s: s.order)
