"""Learned exit decisions: a small decider per exit reads that exit's logits (never a label) and gives the
probability of leaving there.

Two ways to train deciders, one way to use them:

* ``gate`` (Scardapane et al., 2020, "Differentiable branching in deep networks for fast inference"): trained
  with the network, through the soft-conditional output and a cost regulariser (``early_exit.gates``);
* ``learned`` (Bolukbasi et al., 2017, "Adaptive neural networks for efficient inference"; IDK classifiers):
  trained after the network on the validation split, by cost-sensitive classification
  (``early_exit.learned_policy``).

At inference a sample leaves at the first exit whose decider gives more than the exit's threshold (0.5 unless
calibrated), taken for real by the multi-exit runtime like any other criterion. A decider is a head of branch
layers over the logits ending in one value, then a sigmoid; the default head ``[confidence_features,
linear]`` reads the sorted softmax probabilities and the normalised entropy (independent of the order of the
classes) through one linear unit.
"""
from __future__ import annotations

import math
from typing import Annotated, List, Optional, Sequence

import torch
from torch import nn

from ..errors import DistillEEError
from ..registry import BRANCH_LAYERS, EXIT_CRITERIA
from .branch import BranchShapeError, LayerList, LayerSpec, Shape, build_branch
from .criteria import ExitCriterion

#: the default decider head, as a schedule writes it
DEFAULT_HEAD = ("confidence_features", {"type": "linear", "out_features": 1})
#: the threshold of a learned decision when the schedule gives none
DEFAULT_THRESHOLD = 0.5


class ConfidenceFeatures(nn.Module):
    """Label-free confidence features of logits: the softmax probabilities sorted in decreasing order, then the
    entropy divided by ln(classes); (N, C) -> (N, C + 1)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """The features of each row of ``logits``."""
        probs = torch.softmax(logits, dim=1)
        ranked = probs.sort(dim=1, descending=True).values
        classes = logits.shape[1]
        entropy = torch.special.entr(probs).sum(dim=1, keepdim=True)
        return torch.cat([ranked, entropy / math.log(classes) if classes > 1 else entropy], dim=1)


@BRANCH_LAYERS.register("confidence_features")
def confidence_features(in_shape: Shape) -> nn.Module:
    """Sorted softmax probabilities and normalised entropy of logits (a decider head's first layer)."""
    if len(in_shape) != 2:
        raise BranchShapeError("reads logits (N, classes): use it first in a decider head")
    return ConfidenceFeatures()


class Decider(nn.Module):
    """An exit's learned decision: ``head`` over its logits, then a sigmoid; (N, C) -> (N,) in (0, 1)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """The probability of leaving at this exit, per sample."""
        return torch.sigmoid(self.head(logits))[:, 0]


#: a decider head, as a schedule writes it
Head = Annotated[List[LayerSpec], LayerList("a decider head")]


def default_head() -> List[LayerSpec]:
    """The layer specs of the default decider head."""
    return LayerList("a decider head").convert(list(DEFAULT_HEAD), None)


def build_decider(head: Sequence[LayerSpec], num_classes: int, *, exit_name: str, path: str) -> Decider:
    """A Decider whose head takes (N, num_classes) logits and ends in one value per sample."""
    example = torch.zeros(2, num_classes)
    return Decider(build_branch(head, example, 1, exit_name=exit_name, path=path, role="decider head"))


class LearnedCriterion(ExitCriterion):
    """Exit when the exit's decider gives more than the threshold (a probability of leaving, 0.5 by default).

    The registered criteria are unbound; ``bind`` gives one bound to an exit's decider (``ExitSet``'s
    ``criterion_objects`` does this for every exit).
    """

    name = "learned"
    leave = "above"
    learned = True
    default_threshold = DEFAULT_THRESHOLD

    def __init__(self, decider: Optional[nn.Module] = None):
        self.decider = decider

    def bind(self, decider: nn.Module) -> "LearnedCriterion":
        """This criterion deciding with ``decider``."""
        return type(self)(decider)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The decider's probability of leaving, per sample."""
        if self.decider is None:
            raise DistillEEError(f"the {self.name} criterion decides with each exit's learned decider; use the "
                                 "exits' own criteria (ExitSet.criterion_objects) rather than the name")
        return self.decider(logits).reshape(-1)

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """The decider's probability of leaving (a decision: no gradient flows through it)."""
        with torch.no_grad():
            return self.score(logits)

    def check_threshold(self, value: float) -> Optional[str]:
        """Probabilities in [0, 1]."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        return None if ok else "a probability in [0, 1]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'bound' if self.decider is not None else 'unbound'})"


@EXIT_CRITERIA.register("gate")
class GateCriterion(LearnedCriterion):
    """A differentiable gate trained with the network (Scardapane et al., 2020)."""

    name = "gate"
    trained_with_network = True
    settings_key = "gate"


@EXIT_CRITERIA.register("learned", aliases=("learned_policy",))
class LearnedPolicyCriterion(LearnedCriterion):
    """A decider trained after the network on the validation split (Bolukbasi et al., 2017)."""

    name = "learned"
    settings_key = "learned_policy"
