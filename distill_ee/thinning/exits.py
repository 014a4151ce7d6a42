"""Where the early exits of a model attach: exit name -> attach module, for the branches in ``model.early_exits``.

The model holds only the branches (an nn.ModuleDict); the attach module names live in the ExitSet that the
EarlyExit policy built. Thinning needs them, because a branch reads its attach module's output and must lose
the same channels. They come, in this order, from: a mapping the caller gives, an ``attach_points`` mapping
on the ModuleDict, the ExitSet that owns the ModuleDict (alive as long as its EarlyExit policy is).
"""
from __future__ import annotations

import gc
from typing import Dict, Mapping, Optional

from torch import nn

from ..early_exit.attach import EXITS_ATTR, ExitSet
from ..errors import DistillEEError


def exit_branches(model: nn.Module) -> Dict[str, nn.Module]:
    """The exit branches attached to ``model`` by name (empty when it has none)."""
    branches = getattr(model, EXITS_ATTR, None)
    if not isinstance(branches, nn.ModuleDict):
        return {}
    return dict(branches.items())


def exit_attach_points(model: nn.Module, exits: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Exit name -> attach module name for every branch of ``model``; ``exits`` overrides the lookup."""
    branches = getattr(model, EXITS_ATTR, None)
    if not isinstance(branches, nn.ModuleDict) or len(branches) == 0:
        return {}
    found = dict(exits) if exits is not None else _lookup(branches)
    missing = [name for name in branches if name not in found]
    if missing:
        raise DistillEEError(
            f"cannot tell which module exit {missing[0]!r} reads, so thinning could break its branch; "
            f"pass exits={{exit name: attach module name}}")
    return {name: found[name] for name in branches}


def _lookup(branches: nn.ModuleDict) -> Dict[str, str]:
    declared = getattr(branches, "attach_points", None)
    if isinstance(declared, Mapping):
        return dict(declared)
    owner = _owning_exit_set(branches)
    return dict(zip(owner.names, owner.attach)) if owner is not None else {}


def _owning_exit_set(branches: nn.ModuleDict) -> Optional[ExitSet]:
    """The ExitSet whose ``branches`` is this ModuleDict (found among the objects referring to it)."""
    for ref in gc.get_referrers(branches):
        candidates = gc.get_referrers(ref) if isinstance(ref, dict) else [ref]
        for obj in candidates:
            if isinstance(obj, ExitSet) and obj.branches is branches:
                return obj
    return None

