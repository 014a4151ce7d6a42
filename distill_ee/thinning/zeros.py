"""Where a tensor's channels are zero, as an expression over the filters of the layers that made it.

The dependency graph (``builder.py``) notes, for every tensor a layer reads, how its zero channels follow from
zero filters: a convolution's output is zero where its filters are (``Filters``); a sum is zero where every
term is (``AllOf``); a product, such as a squeeze-and-excite block's ``scale * x``, is zero where any factor is
(``AnyOf``); a grouped convolution's output is zero on a whole group where its input is zero on that group
(``Blocks``); an operation that turns zero into something else (a sigmoid, a constant added) is never known to
be zero (``NEVER``). Element-wise layers mapping zero to zero, pooling and batch norm (its shift is the constant
thinning drops, as Distiller does) carry their input's expression. ``evaluate`` gives the boolean per channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

#: the zero channels of a producing layer, by name: a boolean vector of its output channels
FilterZeros = Callable[[str], torch.Tensor]


class Zeros:
    """Base of the zero-channel expressions."""


@dataclass(frozen=True, eq=False)
class Filters(Zeros):
    """Zero where the filters of ``module`` are all zero."""

    module: str


@dataclass(frozen=True, eq=False)
class AllOf(Zeros):
    """Zero where every term is zero: a sum or difference."""

    terms: Tuple[Zeros, ...]


@dataclass(frozen=True, eq=False)
class AnyOf(Zeros):
    """Zero where any factor is zero: a product of tensors."""

    terms: Tuple[Zeros, ...]


@dataclass(frozen=True, eq=False)
class Blocks(Zeros):
    """Zero on every block of ``size`` channels where ``term`` is zero on the whole block: a grouped convolution."""

    term: Zeros
    size: int


class _Never(Zeros):
    """Never known to be zero."""


NEVER: Zeros = _Never()


def evaluate(expr: Zeros, filters: FilterZeros, channels: int) -> torch.Tensor:
    """The channels where ``expr`` is zero, as a boolean vector of ``channels`` entries."""
    return _Evaluation(filters, channels)(expr)


def whole_blocks(zeros: torch.Tensor, size: int) -> torch.Tensor:
    """``zeros`` only on the blocks of ``size`` channels that are zero throughout."""
    if size <= 1:
        return zeros
    return zeros.reshape(-1, size).all(dim=1).repeat_interleave(size)


class _Evaluation:
    """One evaluation, remembering shared sub-expressions (a residual chain reuses each sum)."""

    def __init__(self, filters: FilterZeros, channels: int):
        self.filters = filters
        self.channels = channels
        self.seen: Dict[int, torch.Tensor] = {}

    def __call__(self, expr: Zeros) -> torch.Tensor:
        key = id(expr)
        if key not in self.seen:
            self.seen[key] = RULES[type(expr)](self, expr)
        return self.seen[key]


def _all_of(ev: _Evaluation, expr: AllOf) -> torch.Tensor:
    return torch.stack([ev(t) for t in expr.terms]).all(dim=0)


def _any_of(ev: _Evaluation, expr: AnyOf) -> torch.Tensor:
    return torch.stack([ev(t) for t in expr.terms]).any(dim=0)


RULES: Dict[type, Callable[[_Evaluation, Zeros], torch.Tensor]] = {
    Filters: lambda ev, e: ev.filters(e.module),
    AllOf: _all_of,
    AnyOf: _any_of,
    Blocks: lambda ev, e: whole_blocks(ev(e.term), e.size),
    _Never: lambda ev, e: torch.zeros(ev.channels, dtype=torch.bool),
}
