"""Leave rules: how an exit criterion's score and threshold decide which samples leave, written once.

A criterion declares a score (a number per sample, computed from the exit's logits) and one of these rules;
the PyTorch runtime, the ONNX export (whose exit graphs compute the score) and the numpy runtime of
``distill_ee.deploy`` all decide with the same rule from this table, so they take the same exits. The rules use
only operators that torch tensors and numpy arrays share, and this module imports neither::

    below       score <  threshold   (entropy)
    at_least    score >= threshold   (max_prob, margin)
    above       score >  threshold   (a learned decider's probability of leaving)
    agree       the score (a prediction) equals the previous exit's ``threshold`` exits in a row (patience)

A stateful rule keeps per-sample values in ``state``, a dict shared by the exits of one forward pass, whose
entries the runtime shrinks with the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, MutableMapping, Optional

State = MutableMapping[str, Any]


@dataclass(frozen=True)
class LeaveRule:
    """One way of turning scores and a threshold into a leave mask."""

    name: str
    decide: Callable[[Any, Any, State], Any]
    #: +1: a higher score is more confident; -1: a lower one; 0: the score is not a confidence
    direction: int
    #: True when equality with the threshold already leaves
    inclusive: bool = False
    #: True when the decision depends on the exits before (``state`` carried along the forward pass)
    stateful: bool = False

    def leaves(self, score: Any, threshold: Any, state: Optional[State] = None) -> Any:
        """Boolean mask (per sample) of the rows that leave."""
        return self.decide(score, threshold, {} if state is None else state)


def _agree(pred: Any, threshold: Any, state: State) -> Any:
    """Count, per sample, the exits in a row whose prediction equals the previous one; leave at ``threshold``."""
    previous = state.get("patience_pred")
    count = pred * 0 if previous is None else (state["patience_count"] + 1) * (pred == previous)
    state["patience_pred"], state["patience_count"] = pred, count
    return count >= threshold


LEAVE_RULES: Dict[str, LeaveRule] = {rule.name: rule for rule in (
    LeaveRule("below", lambda score, t, state: score < t, direction=-1),
    LeaveRule("at_least", lambda score, t, state: score >= t, direction=1, inclusive=True),
    LeaveRule("above", lambda score, t, state: score > t, direction=1),
    LeaveRule("agree", _agree, direction=0, stateful=True),
)}


def leave_rule(name: Any) -> Optional[LeaveRule]:
    """The rule named ``name`` (None when there is none)."""
    return LEAVE_RULES.get(name) if isinstance(name, str) else None
