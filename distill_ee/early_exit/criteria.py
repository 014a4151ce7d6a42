"""Exit criteria: when a sample may leave at an exit, decided from that exit's logits alone.

No criterion sees labels: an exit decision is a function of the logits (and, for ``patience``, of the
predictions the same sample got at the exits before). Distiller's sample rule that compared the exit's
cross-entropy against the true label is deliberately absent.

A criterion declares its decision once, and every runtime reads that declaration:

* ``score(logits)``: one number per sample, in torch operations that the ONNX export traces into each exit's
  graph (so ONNX Runtime computes the very same formula);
* ``leave``: the rule (``distill_ee.leave_rules``) that compares the score with the threshold, shared by the
  PyTorch runtime, the exported graphs' numpy runtime and calibration.

From those two, ``exit_mask`` decides, ``confidence`` orders samples for calibration (higher = more confident)
and ``threshold_for`` turns a confidence into a threshold. A stateful rule keeps per-sample tensors in
``state`` (a dict shared along the exits of one forward pass, shrunk together with the batch). A criterion a
plugin writes the same way exports and deploys with the same decisions as in PyTorch; one that decides in an
``exit_mask`` of its own still trains and runs in PyTorch, and ``export_problem`` says why it cannot be
exported.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..errors import DistillEEError
from ..leave_rules import LEAVE_RULES, LeaveRule, leave_rule
from ..registry import EXIT_CRITERIA

State = Dict[str, torch.Tensor]


class ExitCriterion:
    """Base class: a score per sample and the rule deciding from it which samples leave an exit."""

    #: registered name
    name: str = ""
    #: the leave rule of ``distill_ee.leave_rules.LEAVE_RULES`` the score is decided by
    leave: str = ""
    #: True when the criterion decides with each exit's learned decider (bound to it by ``bind``)
    learned: bool = False
    #: True when that decider learns in the network's joint loss (gates) rather than after the network
    trained_with_network: bool = False
    #: the threshold of an exit that gives none (None: the exit is never taken)
    default_threshold: Optional[float] = None
    #: the ``early_exits`` key that gives this criterion's default threshold instance-wide (``patience``)
    threshold_key: Optional[str] = None
    #: the ``early_exits`` block that configures this criterion's deciders (``gate``, ``learned_policy``)
    settings_key: Optional[str] = None

    @property
    def rule(self) -> LeaveRule:
        """The declared leave rule; DistillEEError naming the criterion when it declares none."""
        found = leave_rule(self.leave)
        if found is None:
            raise DistillEEError(f"the {self.name or type(self).__name__} criterion declares no leave rule (set "
                                 f"`leave` to one of {', '.join(LEAVE_RULES)}) and decides in no exit_mask of its own")
        return found

    @property
    def stateful(self) -> bool:
        """True when decisions depend on earlier exits (``state`` must be carried and shrunk with the batch)."""
        found = leave_rule(self.leave)
        return found is not None and found.stateful

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The number per sample that the leave rule compares with the threshold."""
        raise NotImplementedError(f"the {self.name or type(self).__name__} criterion has no score")

    def exit_mask(self, logits: torch.Tensor, threshold: float, state: Optional[State] = None) -> torch.Tensor:
        """Boolean (N,) mask of the samples that leave at this exit: the rule applied to the score."""
        return self.rule.leaves(self.score(logits), threshold, state)

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """One confidence value per sample (higher means more confident): the score, or its negative when a
        lower score leaves."""
        direction = self.rule.direction
        if direction == 0:
            raise NotImplementedError(f"the {self.name} criterion's score is not a confidence")
        score = self.score(logits)
        return score if direction > 0 else -score

    def check_threshold(self, value: float) -> Optional[str]:
        """None when ``value`` is a valid threshold, else a short description of the valid range."""
        return None

    def threshold_for(self, confidence: float, dtype: torch.dtype = torch.float32) -> float:
        """The threshold under which a sample exits exactly when its confidence (of ``dtype``, the logits'
        dtype) is above ``confidence``."""
        return rule_threshold(self, confidence, dtype)

    def export_problem(self) -> Optional[str]:
        """None when the ONNX export and the numpy runtime can take this criterion's decisions, else what it
        lacks: a known leave rule, a score, and no decision of its own beside the rule."""
        if leave_rule(self.leave) is None:
            return f"declares no leave rule (set `leave` to one of {', '.join(LEAVE_RULES)})"
        if type(self).score is ExitCriterion.score:
            return "has no score(logits) for the exported graph to compute"
        if type(self).exit_mask is not ExitCriterion.exit_mask:
            return "decides in an exit_mask of its own, which the exported rule would not follow"
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def rule_threshold(criterion: ExitCriterion, confidence: float, dtype: torch.dtype = torch.float32) -> float:
    """The threshold at which ``criterion``'s leave rule lets a sample go exactly when its confidence is above
    ``confidence``; NotImplementedError when the criterion's score is no confidence bound."""
    found = leave_rule(criterion.leave)
    if found is None or found.direction == 0:
        raise NotImplementedError(f"the {criterion.name} criterion is not calibrated by confidence")
    if found.direction < 0:
        return -float(confidence)  # leave iff -score > confidence iff score < -confidence
    return _next_above(confidence, dtype) if found.inclusive else float(confidence)


def _next_above(value: float, dtype: torch.dtype) -> float:
    """The next representable ``dtype`` number above ``value`` (comparisons happen in the logits' dtype)."""
    v = torch.tensor(float(value), dtype=dtype)
    return float(torch.nextafter(v, torch.tensor(math.inf, dtype=dtype)))


#: just above 1 in float32, what ``threshold_for(1.0)`` gives: "exit only above a probability of 1" = never
_ABOVE_ONE = _next_above(1.0, torch.float32)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy (nats) per row: one softmax, one element-wise -p ln p, one sum; the formula every
    runtime uses (the ONNX export traces it)."""
    return torch.special.entr(torch.softmax(logits, dim=1)).sum(dim=1)


@EXIT_CRITERIA.register("entropy")
class EntropyCriterion(ExitCriterion):
    """BranchyNet's rule: exit when the softmax entropy (natural log) is below the threshold."""

    name = "entropy"
    leave = "below"

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax entropy per sample."""
        return softmax_entropy(logits)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The softmax entropy."""
        return softmax_entropy(logits)

    def check_threshold(self, value: float) -> Optional[str]:
        """Entropy thresholds are numbers >= 0."""
        return None if _finite(value) and value >= 0 else "a number >= 0 (entropy in nats)"


@EXIT_CRITERIA.register("max_prob", aliases=("softmax", "max_softmax"))
class MaxProbCriterion(ExitCriterion):
    """Exit when the largest softmax probability reaches the threshold."""

    name = "max_prob"
    leave = "at_least"

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Largest softmax probability."""
        return torch.softmax(logits, dim=1).amax(dim=1)

    def check_threshold(self, value: float) -> Optional[str]:
        """Probabilities in [0, 1]."""
        return None if _finite(value) and 0 <= value <= _ABOVE_ONE else "a probability in [0, 1]"


@EXIT_CRITERIA.register("margin")
class MarginCriterion(ExitCriterion):
    """Exit when the gap between the two largest softmax probabilities reaches the threshold."""

    name = "margin"
    leave = "at_least"

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """p1 - p2 of the softmax (1 for a single class)."""
        if logits.shape[1] < 2:
            return torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
        top = torch.softmax(logits, dim=1).topk(2, dim=1).values
        return top[:, 0] - top[:, 1]

    def check_threshold(self, value: float) -> Optional[str]:
        """Margins in [0, 1]."""
        return None if _finite(value) and 0 <= value <= _ABOVE_ONE else "a probability margin in [0, 1]"


@EXIT_CRITERIA.register("patience")
class PatienceCriterion(ExitCriterion):
    """Patience-based exit (Zhou et al., 2020): leave once the prediction stayed the same ``threshold``
    exits in a row.

    The threshold is the patience ``k``: a counter starts at 0 at the first patience exit, grows by one at each
    later patience exit whose arg-max equals the previous one and resets to 0 otherwise; a sample exits when the
    counter reaches ``k`` (so ``k + 1`` consecutive exits agree).
    """

    name = "patience"
    leave = "agree"
    threshold_key = "patience"

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The prediction (arg-max), which the rule compares with the previous exit's."""
        return logits.argmax(dim=1)

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """Largest softmax probability (patience itself has no per-exit confidence)."""
        return torch.softmax(logits, dim=1).amax(dim=1)

    def check_threshold(self, value: float) -> Optional[str]:
        """Patience counts are integers >= 1."""
        ok = _finite(value) and value >= 1 and float(value).is_integer()
        return None if ok else "an integer >= 1 (consecutive agreeing exits)"


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
