"""What thinning will do with each pruned layer, known before any training: removable, or kept and why.

``distill-ee check`` prints these notes next to the pruners' targets when the schedule thins, so that a
target thinning cannot shrink is said before the run, not only warned about when thinning runs.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn

from .graph import DependencyGraph, build_dependency_graph
from .groups import ChannelGroup
from .zeros import evaluate

#: the words of a layer's structures that each thinning function removes
STRUCTURES = {"filters": "filters", "channels": "input channels"}


def target_notes(model: nn.Module, parameters: Iterable[str], kind: str) -> List[Tuple[str, str]]:
    """For each pruned parameter (``layer.weight``), whether ``kind`` thinning ("filters" or "channels") can
    remove its zero structures, or why not."""
    graph = build_dependency_graph(model)
    return [(name, _note(graph, name.rpartition(".")[0], kind)) for name in parameters]


def _note(graph: DependencyGraph, module: str, kind: str) -> str:
    group = _group(graph, module, kind)
    if group is None:
        return f"kept: thinning does not remove {STRUCTURES[kind]} of {module!r}"
    if not group.removable:
        return f"kept: {group.blocked}"
    limits = []
    others = [p for p in group.producers if p != module] if kind == "filters" and not _alone(group, module) else []
    if others:
        limits.append(f"a channel goes only where it is zero after {', '.join(others[:3])}"
                      + (" ..." if len(others) > 3 else "") + " too")
    if group.block > 1:
        limits.append(f"whole groups of {group.block} channels only (a grouped convolution reads them)")
    return "removable" + (": " + "; ".join(limits) if limits else "")


def _alone(group: ChannelGroup, module: str) -> bool:
    """Whether zero filters of ``module`` alone make its channels zero wherever they are read (a sum needs its
    other terms zero too; a product does not)."""
    def filters(name: str) -> torch.Tensor:
        return torch.full((group.channels,), name == module)

    return all(bool(evaluate(r, filters, group.channels).all()) for r in group.reads)


def _group(graph: DependencyGraph, module: str, kind: str) -> Optional[ChannelGroup]:
    return graph.producer_group(module) if kind == "filters" else graph.consumer_group(module)
