"""IDK cascades (Wang et al., "IDK Cascades: Fast Deep Learning by Learning not to Overthink", UAI 2018).

Each member but the last gets an "I don't know" classifier: from label-free features of the member's own
output (its largest softmax probability, the margin between the two largest, its entropy scaled to [0, 1]) it
predicts whether the member is right, trained on the validation split with the members' labels as targets.
A member answers when that probability is above its threshold and hands the sample on otherwise.

The thresholds are chosen with the paper's cost-aware objective: over the cascade's settings,
``J = expected error + beta * expected cost / cost of the last member alone`` (0-1 loss; costs are the
members' measured seconds or MACs per sample), and the setting with the smallest ``J`` wins.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..early_exit.deciders import LearnedCriterion
from ..early_exit.tradeoff import ExitCosts, SearchSpace, Settings, build_space, evaluate_grid, explore, uses_grid
from ..errors import ConfigError
from ..registry import EXIT_CRITERIA


def idk_features(logits: torch.Tensor) -> torch.Tensor:
    """(N, 3): max probability, top-2 margin, entropy / ln(classes)."""
    p = torch.softmax(logits.float(), dim=1)
    top = p.topk(min(2, p.shape[1]), dim=1).values
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else torch.ones_like(top[:, 0])
    entropy = torch.special.entr(p).sum(dim=1) / math.log(max(p.shape[1], 2))
    return torch.stack([top[:, 0], margin, entropy], dim=1)


class IDKClassifier(nn.Module):
    """Logistic regression on ``idk_features``: the probability that the member's answer is right."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(N,) probability of being right."""
        return torch.sigmoid(self.linear(idk_features(logits))).squeeze(1)


class IDKCriterion(LearnedCriterion):
    """A member answers when its IDK classifier's probability of being right is above the threshold."""

    name = "idk"
    #: the keys a cascade rule of this kind takes beside ``kind`` (the objective's cost weight, not a threshold)
    rule_keys = ("beta",)


def cascade_rules() -> Dict[str, Any]:
    """The rules a cascade member may answer by, by name: every confidence criterion registered (a stateless
    fixed rule: ``max_prob``, ``margin``, ``entropy``, plugins' own) and the IDK classifier."""
    rules: Dict[str, Any] = {}
    for name in EXIT_CRITERIA.names():
        criterion = EXIT_CRITERIA.get(name)()
        if not criterion.learned and not criterion.stateful:
            rules[name] = type(criterion)
    rules[IDKCriterion.name] = IDKCriterion
    return rules


def fit_idk(logits: torch.Tensor, targets: torch.Tensor, steps: int = 300, seed: int = 0) -> IDKClassifier:
    """An IDK classifier fitted (full batch, L-BFGS, deterministic) to predict ``argmax(logits) == targets``."""
    right = (logits.argmax(dim=1) == targets).float()
    torch.manual_seed(seed)
    model = IDKClassifier()
    features = idk_features(logits.detach())
    if right.min() == right.max():  # always right or always wrong: a constant is the best predictor
        with torch.no_grad():
            model.linear.weight.zero_()
            model.linear.bias.fill_(8.0 if bool(right[0]) else -8.0)
        return model.eval()
    optimizer = torch.optim.LBFGS(model.linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    loss_fn = nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(model.linear(features).squeeze(1), right) + 1e-4 * model.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model.eval()


def idk_objective(settings: Settings, num_samples: int, full_cost: float, beta: float) -> torch.Tensor:
    """The paper's objective per setting: error rate + beta * expected cost / the last member's cost."""
    error = 1.0 - settings.correct / float(num_samples)
    return error + beta * settings.macs / float(full_cost)


def choose_idk_thresholds(member_logits: Sequence[torch.Tensor], targets: torch.Tensor,
                          criteria: Sequence[IDKCriterion], costs: ExitCosts, beta: float
                          ) -> Tuple[List[Optional[float]], float, SearchSpace, Settings]:
    """(thresholds, objective) minimising ``idk_objective`` over the cascade's settings (every member but the
    last answers or hands on), with the search space and the settings evaluated."""
    if not math.isfinite(beta) or beta < 0:
        raise ConfigError(f"the IDK cost weight beta must be a finite number >= 0, got {beta}")
    space = build_space(list(member_logits), targets, list(criteria), costs)
    settings = evaluate_grid(space) if uses_grid(space) else explore(space)
    objective = idk_objective(settings, space.num_samples, costs.full_macs, beta)
    row = int(torch.argmin(objective))
    thresholds = space.thresholds_of(settings.index[row].tolist())
    return thresholds, float(objective[row]), space, settings
