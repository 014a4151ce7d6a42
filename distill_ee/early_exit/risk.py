"""Thresholds with a statistical guarantee: Learn-then-Test, as CALM uses it for early exit.

A plain calibration picks the cheapest thresholds whose drop *on the validation split* meets the target; with a
few hundred images that choice overfits, and the drop on new data is often larger. Here the promise is about
new data: with probability at least ``1 - delta`` over the validation split, the chosen thresholds' loss rate on
new data from the same distribution is at most the target (Angelopoulos et al., "Learn then Test", 2021;
Schuster et al., "Confident Adaptive Language Modeling", 2022).

Losses, one per sample, 0 or 1:

* ``risk`` consistency: the early-exit prediction is wrong where the final classifier's is right (CALM's risk
  consistency, ``max(0, L_exit - L_final)`` for the 0-1 loss). The top-1 drop against the final exit is the
  rate of these losses minus the rate of the opposite case, so it is at most their rate.
* ``textual`` consistency: the early-exit prediction differs from the final classifier's. It needs no label.

Procedure (Pareto testing, Laufer-Goldshtein et al., 2022):

1. The validation samples are split, with a seed, into a *search* part and a *test* part.
2. On the search part, the Pareto front of threshold settings in (expected MACs, loss rate) is found and ordered
   from the most expensive (every exit off: no loss) to the cheapest. The order depends on the search part only.
3. On the test part, fixed-sequence testing at level ``delta``: for each setting in that order, the null
   hypothesis "loss rate > target" is rejected when its p-value ``P(Binomial(n, target) <= losses)`` is at most
   ``delta``; testing stops at the first setting that is not rejected. The losses are 0/1, so this exact
   binomial tail is a valid p-value and the tightest one (Hoeffding or Hoeffding-Bentkus bounds, which hold for
   any loss in [0, 1], are looser: ``hoeffding_p_value`` is here for comparison). Fixed-sequence testing keeps
   the family-wise error at ``delta`` without a Bonferroni division.
4. The cheapest certified setting is chosen. Its certified bound is the Clopper-Pearson upper confidence bound
   of its loss rate at level ``delta``. When nothing is certified (too few test samples for the target), the
   final exit alone is chosen, and the smallest target the test part could certify is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from .criteria import criteria_list
from .decisions import decide_exits

CONSISTENCY = ("risk", "textual")
#: the name of the bound in reports
BOUND = "exact binomial tail (Clopper-Pearson)"


@dataclass(frozen=True)
class Guarantee:
    """What to certify: ``confidence`` = 1 - delta, the consistency notion, and how validation is split."""

    confidence: float = 0.9
    consistency: str = "risk"
    #: share of the validation samples that choose the order of the candidates (the rest test them)
    search_share: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.confidence, bool) or not 0.0 < float(self.confidence) < 1.0:
            raise ConfigError(f"the confidence of a guarantee is in (0, 1), e.g. 0.9; got {self.confidence!r}")
        if self.consistency not in CONSISTENCY:
            raise ConfigError(f"unknown consistency {self.consistency!r} (valid: {', '.join(CONSISTENCY)})")
        if not 0.0 < self.search_share < 1.0:
            raise ConfigError(f"search_share is in (0, 1), got {self.search_share!r}")

    @property
    def delta(self) -> float:
        """The allowed probability of a broken promise."""
        return 1.0 - float(self.confidence)


# --------------------------------------------------------------------------- p-values and bounds
def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Binomial(n, p) <= k)``, computed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
                 + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def binomial_p_value(losses: int, n: int, target: float) -> float:
    """The p-value of "loss rate > target" given ``losses`` 0/1 losses in ``n`` samples."""
    return binomial_cdf(int(losses), int(n), float(target))


def hoeffding_p_value(mean: float, n: int, target: float) -> float:
    """Hoeffding's p-value of "mean > target" for losses in [0, 1]: ``exp(-2 n (target - mean)^2)``."""
    if mean >= target:
        return 1.0
    return math.exp(-2.0 * n * (target - mean) ** 2)


def clopper_pearson_upper(losses: int, n: int, delta: float) -> float:
    """The smallest rate ``r`` with ``P(Binomial(n, r) <= losses) <= delta``: an upper bound on the loss rate
    that holds with probability at least ``1 - delta``."""
    if losses >= n:
        return 1.0
    low, high = losses / n, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if binomial_cdf(losses, n, mid) > delta:
            low = mid
        else:
            high = mid
    return high


def smallest_certifiable(n: int, delta: float) -> float:
    """The smallest target a test part of ``n`` samples can certify: zero losses, ``1 - delta^(1/n)``."""
    return 1.0 - delta ** (1.0 / n) if n > 0 else 1.0


def fixed_sequence(p_values: Sequence[float], delta: float) -> int:
    """How many hypotheses, in order, fixed-sequence testing rejects: all up to the first p-value above delta."""
    count = 0
    for p in p_values:
        if p > delta:
            break
        count += 1
    return count


# --------------------------------------------------------------------------- losses
def consistency_ok(exit_logits: Sequence[torch.Tensor], targets: Optional[torch.Tensor],
                   consistency: str) -> torch.Tensor:
    """(K+1, N) float64: 1 where leaving at that output costs no loss (the final classifier: always 1)."""
    if consistency not in CONSISTENCY:
        raise ConfigError(f"unknown consistency {consistency!r} (valid: {', '.join(CONSISTENCY)})")
    predictions = [l.argmax(dim=1) for l in exit_logits]
    final = predictions[-1]
    if consistency == "textual":
        ok = [p == final for p in predictions]
    else:
        if targets is None:
            raise ConfigError("risk consistency needs the labels; textual consistency does not")
        final_right = final == targets
        ok = [~(final_right & (p != targets)) for p in predictions]
    return torch.stack(ok).to(torch.float64)


def loss_rate(exit_logits: Sequence[torch.Tensor], targets: Optional[torch.Tensor], criteria: Sequence[Any],
              thresholds: Sequence[Optional[float]], consistency: str) -> float:
    """The share of samples whose exit under ``thresholds`` costs a loss of the ``consistency`` notion."""
    ok = consistency_ok(exit_logits, targets, consistency)
    crits = criteria_list(list(criteria), len(exit_logits) - 1)
    _, exit_index = decide_exits(exit_logits, crits, list(thresholds))
    n = max(int(exit_index.shape[0]), 1)
    return 1.0 - float(ok.gather(0, exit_index.unsqueeze(0)).sum()) / n


def split_indices(n: int, share: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(search, test) sample indices: a seeded permutation cut at ``share`` (each part at least one sample)."""
    if n < 2:
        raise ConfigError("a guarantee needs at least two validation samples (one to search, one to test)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    cut = min(max(int(round(share * n)), 1), n - 1)
    return order[:cut], order[cut:]


# --------------------------------------------------------------------------- the certificate
@dataclass
class Certificate:
    """What the test part certified, for reports."""

    consistency: str
    delta: float
    #: the loss rate certified (None: a MACs budget chose the setting, whose loss rate is only bounded)
    target: Optional[float]
    search_samples: int
    test_samples: int
    #: settings on the search part's front, in testing order, with their test-part losses and p-values
    tested: List[Dict[str, Any]] = field(default_factory=list)
    #: how many of them were certified (a prefix of ``tested``)
    certified: int = 0
    #: index into ``tested`` of the chosen setting (None: nothing certified, the final exit alone is used)
    chosen: Optional[int] = None
    #: Clopper-Pearson upper bound of the chosen setting's loss rate at level delta
    bound: Optional[float] = None
    #: the smallest target this test part could certify
    smallest_target: float = 0.0

    @property
    def message(self) -> str:
        """A sentence for the log: what is promised, or why nothing could be."""
        what = "top-1 drop" if self.consistency == "risk" else "disagreement with the final classifier"
        if self.chosen is None:
            return (f"no threshold setting could be certified: with {self.test_samples} test samples of the "
                    f"validation split, the smallest {what} certifiable at confidence {1 - self.delta:g} is "
                    f"{100 * self.smallest_target:.2f} points, and no setting with exits met the target of "
                    f"{100 * (self.target or 0.0):g}; the final exit alone is used (more validation samples, or "
                    "a larger target, would allow exits)")
        how = (f"{self.certified} of {len(self.tested)} settings certified at target {100 * self.target:g}, "
               if self.target is not None else "the setting the budget chose, ")
        return (f"with probability at least {1 - self.delta:g}, the {what} on new data is at most "
                f"{100 * self.bound:.2f} points ({how}{BOUND} on {self.test_samples} samples)")

    def to_dict(self) -> Dict[str, Any]:
        """Plain types, for summary.json."""
        return {"consistency": self.consistency, "delta": self.delta, "confidence": 1.0 - self.delta,
                "bound_used": BOUND, "target": self.target, "certified_bound": self.bound,
                "certified_settings": self.certified, "settings_tested": len(self.tested),
                "search_samples": self.search_samples, "test_samples": self.test_samples,
                "smallest_certifiable_target": self.smallest_target, "fallback_to_final": self.chosen is None,
                "message": self.message}


def certify_sequence(losses: Sequence[int], n: int, target: float, delta: float) -> Tuple[List[float], int]:
    """(p-value of each setting, how many fixed-sequence testing certifies) for losses in testing order."""
    p_values = [binomial_p_value(k, n, target) for k in losses]
    return p_values, fixed_sequence(p_values, delta)
