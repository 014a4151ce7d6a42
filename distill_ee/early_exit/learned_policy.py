"""Exit policies learned after the network, on the validation split (Bolukbasi et al., 2017, "Adaptive neural
networks for efficient inference"; "I don't know" classifiers, Wang et al., 2017).

Each exit's decider reads that exit's logits (never a label) and says whether to leave. The deciders are
trained from the last early exit back to the first, by cost-sensitive classification:

* leaving at exit b costs a sample ``error_b + tradeoff * v_b`` (0/1 error there; v_b the MACs of leaving at b
  over the backbone's MACs, every branch on the way included);
* going on costs what the policy already learned for the later exits makes it pay (the final classifier last);
* the decider learns to leave where leaving costs less, each sample weighted by how much the choice matters.

``tradeoff`` is the single knob: the number of errors per sample that saving one backbone's worth of MACs is
worth (0: leave only where it costs no accuracy). At inference a sample leaves where its decider says more
than 0.5 (the exit's threshold), for real, like any other criterion.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..modules import eval_mode, unwrap
from .calibrate import exit_costs
from .deciders import LearnedPolicyCriterion
from .exits import EarlyExits
from .stats import collect_exit_logits
from .tradeoff import ExitCosts, TradeoffPoint, measure_point

#: optimiser steps (full batch) per exit's decider
STEPS = 300
LEARNING_RATE = 0.05


def fit_deciders(deciders: Sequence[nn.Module], exit_logits: Sequence[torch.Tensor], targets: torch.Tensor,
                 costs: Sequence[float], tradeoff: float, *, steps: int = STEPS, lr: float = LEARNING_RATE,
                 threshold: float = 0.5) -> List[float]:
    """Train ``deciders`` (one per early exit) in place on these logits (final classifier's last); ``costs``
    holds each output's MACs over the backbone's. Returns each decider's share of samples that leave."""
    if not (len(exit_logits) == len(costs) == len(deciders) + 1):
        raise ValueError(f"need one decider per early exit and one logits tensor and cost per output, got "
                         f"{len(deciders)}, {len(exit_logits)} and {len(costs)}")
    errors = [(logits.argmax(dim=1) != targets).to(torch.float32) for logits in exit_logits]
    go_on = errors[-1] + tradeoff * float(costs[-1])
    shares: List[float] = []
    for b in reversed(range(len(deciders))):
        leave = errors[b] + tradeoff * float(costs[b])
        _train(deciders[b], exit_logits[b].detach(), (leave <= go_on).to(torch.float32), (leave - go_on).abs(),
               steps, lr)
        with torch.no_grad():
            leaves = deciders[b](exit_logits[b]) > threshold
        shares.append(float(leaves.float().mean()))
        go_on = torch.where(leaves, leave, go_on)
    return shares[::-1]


def _train(decider: nn.Module, logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, steps: int,
           lr: float) -> None:
    """Weighted binary cross-entropy, full batch, Adam (deterministic on the CPU)."""
    total = float(weight.sum())
    if total <= 0:  # leaving and going on cost every sample the same: nothing to learn
        return
    weight = weight / total
    was_training = decider.training
    decider.train()
    inputs, rest = _fixed_prefix(decider, logits)
    optimizer = torch.optim.Adam(decider.parameters(), lr=lr)
    for _ in range(steps):
        p = torch.sigmoid(rest(inputs))[:, 0].clamp(1e-6, 1 - 1e-6)
        loss = -(weight * (label * torch.log(p) + (1 - label) * torch.log(1 - p))).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decider.train(was_training)


def _fixed_prefix(decider: nn.Module, logits: torch.Tensor) -> Tuple[torch.Tensor, nn.Module]:
    """The head's leading layers without parameters, buffers or randomness (``confidence_features``) applied
    once, and the layers that remain to train."""
    layers = list(decider.head)
    k = 0
    while k < len(layers) and not any(True for _ in layers[k].parameters()) \
            and not any(True for _ in layers[k].buffers()) and not isinstance(layers[k], nn.Dropout):
        k += 1
    with torch.no_grad():
        inputs = nn.Sequential(*layers[:k])(logits) if k else logits
    return inputs, nn.Sequential(*layers[k:])


@dataclass
class PolicyPoint:
    """A learned policy trained for one trade-off, and its figures on validation (and test)."""

    tradeoff: float
    valid: TradeoffPoint
    test: Optional[TradeoffPoint]
    state: List[Dict[str, torch.Tensor]]

    def to_dict(self) -> Dict[str, object]:
        """Plain types (for JSON)."""
        return {"tradeoff": self.tradeoff, "valid": self.valid.to_dict(),
                "test": self.test.to_dict() if self.test is not None else None}


def policy_curve(deciders: Sequence[nn.Module], valid_logits: Sequence[torch.Tensor], valid_targets: torch.Tensor,
                 costs: ExitCosts, tradeoffs: Sequence[float], *, test_logits: Optional[Sequence[torch.Tensor]] = None,
                 test_targets: Optional[torch.Tensor] = None) -> List[PolicyPoint]:
    """A policy per trade-off, each trained from ``deciders``' current state on the validation logits, with its
    accuracy and expected MACs on validation (and test); ``deciders`` themselves are left unchanged."""
    fractions = [m / costs.full_macs for m in costs.macs_per_exit]
    points: List[PolicyPoint] = []
    for tradeoff in tradeoffs:
        trained = [copy.deepcopy(d) for d in deciders]
        fit_deciders(trained, valid_logits, valid_targets, fractions, tradeoff)
        criteria = [LearnedPolicyCriterion(d.eval()) for d in trained]
        thresholds = [0.5] * len(trained)
        with torch.no_grad():
            valid = measure_point(valid_logits, valid_targets, criteria, thresholds, costs)
            test = (measure_point(test_logits, test_targets, criteria, thresholds, costs)
                    if test_logits is not None and test_targets is not None else None)
        points.append(PolicyPoint(tradeoff, valid, test, [copy.deepcopy(d.state_dict()) for d in trained]))
    return points


def tradeoff_grid(tradeoff: float) -> List[float]:
    """The trade-offs a curve is drawn over: 0 and ``tradeoff`` times 1/8 .. 8 (``tradeoff`` 0: 1/8 .. 8)."""
    base = tradeoff if tradeoff > 0 else 1.0
    return sorted({0.0, tradeoff, *(base * 2.0 ** k for k in range(-3, 4))})


def policy_deciders(exits: EarlyExits) -> List[nn.Module]:
    """The exits' learned-policy deciders in exit order (ConfigError unless the criterion is ``learned``)."""
    if not exits.exit_set.learned_policy:
        raise ConfigError("a learned exit policy needs exits attached with `criterion: learned`")
    deciders = exits.exit_set.learned_deciders
    return [deciders[n] for n in exits.exit_names]


def fit_exit_policy(exits: EarlyExits, valid_batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], *,
                    tradeoff: Optional[float] = None, masks: Optional[Mapping[str, Any]] = None) -> List[float]:
    """Train the exits' learned deciders on validation batches for ``tradeoff`` (default: the schedule's);
    returns each exit's share of the validation samples that leave there."""
    deciders = policy_deciders(exits)
    multi = exits.multi_exit_model()
    with eval_mode(multi):
        logits, targets = collect_exit_logits(multi, valid_batches)
    costs = exit_costs(multi, unwrap(exits.model), masks)
    if tradeoff is None:
        tradeoff = exits.spec.learned_policy.tradeoff  # type: ignore[union-attr]
    return fit_deciders(deciders, logits, targets, [m / costs.full_macs for m in costs.macs_per_exit], tradeoff)
