"""Per-sample state of modules that change a network's computation per input (routing), across one forward pass.

A routing set decides, for each sample, which blocks run. Some decisions are made once per input (BlockDrop's
policy network reads the image) or carry a state from block to block (SkipNet's recurrent gate); that state
has one row per sample of the batch. Whoever runs the network in pieces (the multi-exit runtime, which
shrinks the batch after each exit) tells these modules where a forward pass starts (``begin_rows``) and
which rows go on (``select_rows``). A plain ``model(x)`` call starts them through a forward pre-hook.

``static_compute(model)`` turns every such module off for a while (all blocks run, no decision is computed):
what MAC counts and the backbone timings use.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List

import torch
from torch import nn

#: the attribute of a routed module naming the DynamicComputation it belongs to
OWNER_ATTR = "_dynamic_owner"


class DynamicComputation(nn.Module):
    """A module that decides per sample what parts of the network run; subclasses keep per-row state."""

    def __init__(self) -> None:
        super().__init__()
        #: False while ``static_compute`` holds: every block runs and no decision is computed
        self.dynamic = True

    def begin_rows(self, x: torch.Tensor) -> None:
        """A forward pass on the batch ``x`` (the network's input) starts."""

    def select_rows(self, keep: torch.Tensor) -> None:
        """Only rows ``keep`` (indices among the live rows) go on in this forward pass."""


def owners(modules: Iterable[nn.Module]) -> List[DynamicComputation]:
    """The DynamicComputation modules that the given modules (or their submodules) are routed by."""
    found: List[DynamicComputation] = []
    for root in modules:
        for m in root.modules():
            owner = m.__dict__.get(OWNER_ATTR)
            if owner is not None and not any(owner is f for f in found):
                found.append(owner)
    return found


def begin_rows(holders: Iterable[DynamicComputation], x: torch.Tensor) -> None:
    """Start a forward pass on ``x`` for every holder."""
    for h in holders:
        h.begin_rows(x)


def select_rows(holders: Iterable[DynamicComputation], keep: torch.Tensor) -> None:
    """Keep rows ``keep`` in every holder's per-sample state."""
    for h in holders:
        h.select_rows(keep)


class static_compute:
    """Context manager: every DynamicComputation of ``model`` off (all blocks run, no decisions computed)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved: List[tuple] = []

    def __enter__(self) -> nn.Module:
        self.saved = [(m, m.dynamic) for m in _holders(self.model)]
        for m, _ in self.saved:
            m.dynamic = False
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, state in self.saved:
            m.dynamic = state


def _holders(model: nn.Module) -> Iterator[DynamicComputation]:
    return (m for m in model.modules() if isinstance(m, DynamicComputation))
