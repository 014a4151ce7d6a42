"""Matching the parameter and module names a schedule gives to the model's own names."""
from __future__ import annotations

import fnmatch
from typing import Iterable, List, Optional

_GLOB_CHARS = set("*?[")


def strip_data_parallel(name: str) -> str:
    """Drop DataParallel's ``module`` path components (``module.conv1.weight`` -> ``conv1.weight``)."""
    return ".".join(part for part in name.split(".") if part != "module")


def resolve_name(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The model name ``name`` refers to, tolerating Distiller's ``module.`` prefixes; None if none."""
    candidates = list(candidates)
    if name in candidates:
        return name
    bare = strip_data_parallel(name)
    for cand in candidates:
        if cand == bare or strip_data_parallel(cand) == bare:
            return cand
    return None


def is_pattern(name: str) -> bool:
    """True for shell-style patterns such as ``layer*.conv1.weight`` (but not the bare catch-all ``*``)."""
    return name != "*" and bool(_GLOB_CHARS & set(name))


def expand_name(name: str, candidates: Iterable[str]) -> List[str]:
    """All model names matched by ``name`` (a plain name, or a shell-style pattern)."""
    candidates = list(candidates)
    if not is_pattern(name):
        hit = resolve_name(name, candidates)
        return [hit] if hit else []
    bare = strip_data_parallel(name)
    return [c for c in candidates if fnmatch.fnmatchcase(c, name) or fnmatch.fnmatchcase(c, bare)]
