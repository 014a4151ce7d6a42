"""Stratified, seeded splitting of a labelled dataset into a kept part and a held-out part."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

from distill_ee.errors import DataError

Labels = Union[Sequence[int], np.ndarray]


def held_out_counts(class_counts: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class held-out sizes summing to round(N * fraction) (at least 1), by largest remainder."""
    total = max(1, int(round(class_counts.sum() * fraction)))
    exact = class_counts * fraction
    counts = np.floor(exact).astype(np.int64)
    # Stable sort: among equal remainders the lower class index gets the extra sample.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def stratified_split(labels: Labels, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)`` holding out ``fraction`` of every class; both in a seeded random order."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if fraction <= 0:
        return rng.permutation(len(labels)), np.empty(0, dtype=np.int64)
    classes, class_counts = np.unique(labels, return_counts=True)
    quotas = held_out_counts(class_counts, fraction)
    kept, held = [], []
    for cls, quota in zip(classes, quotas):
        members = rng.permutation(np.flatnonzero(labels == cls))
        held.append(members[:quota])
        kept.append(members[quota:])
    kept_idx, held_idx = np.concatenate(kept), np.concatenate(held)
    if len(kept_idx) == 0:
        raise DataError(f"cannot hold out {fraction:.0%} of only {len(labels)} samples and keep any")
    return rng.permutation(kept_idx), rng.permutation(held_idx)
