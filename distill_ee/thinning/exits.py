"""The exit branches a model carries, with the module each one reads, for the dependency graph.

Exit branches live in ``ExitSet`` modules (``model.early_exits``), which declare their attach points: a
branch reads its attach module's output, so thinning must take the same channels out of its first layers.
"""
from __future__ import annotations

from typing import List, Mapping, NamedTuple, Optional

from torch import nn

from ..early_exit.exit_set import exit_sets
from ..errors import DistillEEError


class ExitBranch(NamedTuple):
    """One exit branch: its module name in the model, the module, and the module whose output it reads."""

    name: str
    module: nn.Module
    reads: str


def exit_branches(model: nn.Module, attach: Optional[Mapping[str, str]] = None) -> List[ExitBranch]:
    """Every exit branch inside ``model``; ``attach`` (exit name -> module name) overrides declared points."""
    found = []
    for set_name, exit_set in exit_sets(model):
        prefix = f"{set_name}." if set_name else ""
        outer = set_name.rpartition(".")[0]
        for exit_name, branch in exit_set.items():
            reads = dict(attach or {}).get(exit_name, exit_set.attach_points.get(exit_name))
            if reads is None:
                raise DistillEEError(f"exit {exit_name!r} declares no attach point, so thinning could break its "
                                     "branch")
            found.append(ExitBranch(prefix + exit_name, branch, f"{outer}.{reads}" if outer else reads))
    return found
