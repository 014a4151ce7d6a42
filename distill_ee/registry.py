"""Name -> class registries for everything a schedule or the command line may name."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

from .errors import DistillEEError

T = TypeVar("T")


class UnknownNameError(DistillEEError, LookupError):
    """A name that is not registered; carries close names and the full list of valid ones."""

    def __init__(self, kind: str, name: str, valid: List[str]):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        self.suggestions = suggest(name, self.valid)
        super().__init__(self.describe())

    def describe(self) -> str:
        """One-line message: what was asked, close names, what is valid."""
        msg = f"unknown {self.kind} {self.name!r}"
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
    """A typed map from names (and aliases) to registered objects, filled by a decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Any] = {}
        self._aliases: Dict[str, str] = {}

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

    def names(self, pattern: str = "*") -> List[str]:
        """Registered (non-alias) names matching a shell-style pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


PRUNERS = Registry("pruner")
REGULARIZERS = Registry("regularizer")
QUANTIZERS = Registry("quantizer")
LR_SCHEDULERS = Registry("lr_scheduler")
EXTENSIONS = Registry("extension")
EARLY_EXITS = Registry("early-exit class")
EXIT_CRITERIA = Registry("exit criterion")
BRANCH_LAYERS = Registry("branch layer")
MODELS = Registry("architecture")
DATASETS = Registry("dataset")
