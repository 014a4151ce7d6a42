"""Exit criteria: when a sample may leave at an exit, decided from that exit's logits alone.

No criterion sees labels: an exit decision is a function of the logits (and, for ``patience``, of the
predictions the same sample got at the exits before). Distiller's sample rule that compared the exit's
cross-entropy against the true label is deliberately absent.

Every criterion offers ``confidence(logits)`` (higher = more confident, one value per sample) and
``exit_mask(logits, threshold, state)``; a stateful criterion keeps per-sample tensors in ``state`` (a dict
shared along the exits of one forward pass, shrunk together with the batch).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..registry import EXIT_CRITERIA

State = Dict[str, torch.Tensor]


class ExitCriterion:
    """Base class: a rule deciding from an exit's logits which samples leave there."""

    #: registered name
    name: str = ""
    #: True when decisions depend on earlier exits (``state`` must be carried and shrunk with the batch)
    stateful: bool = False

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """One confidence value per sample; higher means more confident."""
        raise NotImplementedError

    def exit_mask(self, logits: torch.Tensor, threshold: float, state: Optional[State] = None) -> torch.Tensor:
        """Boolean (N,) mask of the samples that leave at this exit."""
        raise NotImplementedError

    def check_threshold(self, value: float) -> Optional[str]:
        """None when ``value`` is a valid threshold, else a short description of the valid range."""
        return None

    def threshold_for(self, confidence: float, dtype: torch.dtype = torch.float32) -> float:
        """The threshold under which a sample exits exactly when its confidence (of ``dtype``, the logits'
        dtype) is above ``confidence``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _next_above(value: float, dtype: torch.dtype) -> float:
    """The next representable ``dtype`` number above ``value`` (comparisons happen in the logits' dtype)."""
    v = torch.tensor(float(value), dtype=dtype)
    return float(torch.nextafter(v, torch.tensor(math.inf, dtype=dtype)))


#: just above 1 in float32, what ``threshold_for(1.0)`` gives: "exit only above a probability of 1" = never
_ABOVE_ONE = _next_above(1.0, torch.float32)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@EXIT_CRITERIA.register("entropy")
class EntropyCriterion(ExitCriterion):
    """BranchyNet's rule: exit when the softmax entropy (natural log) is below the threshold."""

    name = "entropy"

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax entropy per sample: one softmax, one element-wise -p ln p, one sum."""
        return torch.special.entr(torch.softmax(logits, dim=1)).sum(dim=1)

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """Negative entropy."""
        return -self.entropy(logits)

    def exit_mask(self, logits: torch.Tensor, threshold: float, state: Optional[State] = None) -> torch.Tensor:
        """Samples whose entropy is strictly below ``threshold``."""
        return self.entropy(logits) < threshold

    def check_threshold(self, value: float) -> Optional[str]:
        """Entropy thresholds are numbers >= 0."""
        return None if _finite(value) and value >= 0 else "a number >= 0 (entropy in nats)"

    def threshold_for(self, confidence: float, dtype: torch.dtype = torch.float32) -> float:
        """Entropy bound: exit iff -H > confidence."""
        return -float(confidence)


@EXIT_CRITERIA.register("max_prob", aliases=("softmax", "max_softmax"))
class MaxProbCriterion(ExitCriterion):
    """Exit when the largest softmax probability reaches the threshold."""

    name = "max_prob"

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """Largest softmax probability."""
        return torch.softmax(logits, dim=1).amax(dim=1)

    def exit_mask(self, logits: torch.Tensor, threshold: float, state: Optional[State] = None) -> torch.Tensor:
        """Samples whose top probability is >= ``threshold``."""
        return self.confidence(logits) >= threshold

    def check_threshold(self, value: float) -> Optional[str]:
        """Probabilities in [0, 1]."""
        return None if _finite(value) and 0 <= value <= _ABOVE_ONE else "a probability in [0, 1]"

    def threshold_for(self, confidence: float, dtype: torch.dtype = torch.float32) -> float:
        """The smallest ``dtype`` value above ``confidence`` (exit iff p > confidence)."""
        return _next_above(confidence, dtype)


@EXIT_CRITERIA.register("margin")
class MarginCriterion(ExitCriterion):
    """Exit when the gap between the two largest softmax probabilities reaches the threshold."""

    name = "margin"

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """p1 - p2 of the softmax."""
        if logits.shape[1] < 2:
            return torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
        top = torch.softmax(logits, dim=1).topk(2, dim=1).values
        return top[:, 0] - top[:, 1]

    def exit_mask(self, logits: torch.Tensor, threshold: float, state: Optional[State] = None) -> torch.Tensor:
        """Samples whose top-two probability margin is >= ``threshold``."""
        return self.confidence(logits) >= threshold

    def check_threshold(self, value: float) -> Optional[str]:
        """Margins in [0, 1]."""
        return None if _finite(value) and 0 <= value <= _ABOVE_ONE else "a probability margin in [0, 1]"

    def threshold_for(self, confidence: float, dtype: torch.dtype = torch.float32) -> float:
        """The smallest ``dtype`` value above ``confidence``."""
        return _next_above(confidence, dtype)


@EXIT_CRITERIA.register("patience")
class PatienceCriterion(ExitCriterion):
    """Patience-based exit (Zhou et al., 2020): leave once the prediction stayed the same ``threshold``
    exits in a row.

    The threshold is the patience ``k``: a counter starts at 0 at the first patience exit, grows by one at each
    later patience exit whose arg-max equals the previous one and resets to 0 otherwise; a sample exits when the
    counter reaches ``k`` (so ``k + 1`` consecutive exits agree).
    """

    name = "patience"
    stateful = True

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """Largest softmax probability (patience itself has no per-exit confidence)."""
        return torch.softmax(logits, dim=1).amax(dim=1)

    def exit_mask(self, logits: torch.Tensor, threshold: float, state: Optional[State] = None) -> torch.Tensor:
        """Update the per-sample agreement counter in ``state`` and return counter >= ``threshold``."""
        if state is None:
            state = {}
        pred = logits.argmax(dim=1)
        prev = state.get("patience_pred")
        if prev is None:
            count = torch.zeros_like(pred)
        else:
            count = torch.where(pred == prev, state["patience_count"] + 1, torch.zeros_like(pred))
        state["patience_pred"] = pred
        state["patience_count"] = count
        return count >= threshold

    def check_threshold(self, value: float) -> Optional[str]:
        """Patience counts are integers >= 1."""
        ok = _finite(value) and value >= 1 and float(value).is_integer()
        return None if ok else "an integer >= 1 (consecutive agreeing exits)"

    def threshold_for(self, confidence: float, dtype: torch.dtype = torch.float32) -> float:
        """Not defined: patience is not a confidence bound."""
        raise NotImplementedError("the patience criterion is not calibrated by confidence")


CriterionArg = Union[str, ExitCriterion, Sequence[Union[str, ExitCriterion]]]


def get_criterion(criterion: Union[str, ExitCriterion]) -> ExitCriterion:
    """An ExitCriterion instance from a registered name (or the instance itself)."""
    if isinstance(criterion, ExitCriterion):
        return criterion
    return EXIT_CRITERIA.get(criterion)()


def criteria_list(criteria: CriterionArg, count: int) -> List[ExitCriterion]:
    """One criterion per exit from a single criterion (shared by all) or a sequence of ``count``."""
    if isinstance(criteria, (str, ExitCriterion)):
        return [get_criterion(criteria)] * count
    items = [get_criterion(c) for c in criteria]
    if len(items) != count:
        raise ValueError(f"need {count} criteria (one per exit), got {len(items)}")
    return items
