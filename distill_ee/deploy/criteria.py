"""Exit decisions on numpy logits, the same rules as ``distill_ee.early_exit.criteria`` (float32, like torch).

``exit_mask(name, logits, threshold, state)`` gives the samples that leave; ``patience`` keeps its per-sample
counter in ``state``, which the runtime shrinks with the batch.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

State = Dict[str, np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    return e / e.sum(axis=1, keepdims=True)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row's softmax."""
    p = softmax(logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), np.float32(0))
    return terms.sum(axis=1)


def exit_mask(name: str, logits: np.ndarray, threshold: float, state: State) -> np.ndarray:
    """Boolean mask of the rows that leave under criterion ``name`` at ``threshold``."""
    if name == "entropy":
        return entropy(logits) < threshold
    if name == "max_prob":
        return softmax(logits).max(axis=1) >= threshold
    if name == "margin":
        if logits.shape[1] < 2:
            return np.ones(logits.shape[0], dtype=bool)
        top = np.sort(softmax(logits), axis=1)
        return (top[:, -1] - top[:, -2]) >= threshold
    if name == "patience":
        return _patience(logits.argmax(axis=1), threshold, state)
    raise ValueError(f"no rule for criterion {name!r}")


def leaves(name: str, score: np.ndarray, threshold: float, state: State) -> np.ndarray:
    """Boolean mask of the rows that leave, from the score an exported exit computes in its graph (entropy,
    max probability, margin, prediction for patience, or a decider's probability of leaving)."""
    if name == "entropy":
        return score < threshold
    if name in ("max_prob", "margin"):
        return score >= threshold
    if name == "patience":
        return _patience(score, threshold, state)
    return score > threshold


def _patience(pred: np.ndarray, threshold: float, state: State) -> np.ndarray:
    """Count, per sample, the exits in a row that agreed with the previous one; leave at ``threshold``."""
    previous = state.get("patience_pred")
    count = np.zeros_like(pred) if previous is None else np.where(pred == previous, state["patience_count"] + 1, 0)
    state["patience_pred"], state["patience_count"] = pred, count
    return count >= threshold
