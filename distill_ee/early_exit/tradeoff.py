"""The accuracy / cost trade-off of exit thresholds, measured on cached exit logits (files: apputils).

Every early exit gets candidate thresholds: quantiles of its confidence on the calibration split, converted
to the criterion's own units (``threshold_for``), loosest first, plus "off" (threshold None: never taken,
branch not evaluated). Each candidate's decisions are made once, by the criterion's own ``exit_mask``, so a
sample is summarised at each exit by its *rank*: how many of that exit's candidates let it leave. A setting
(one candidate index per exit) sends a sample to the first exit whose index is below its rank, else to the
final classifier. Labels only score settings; they never take part in a decision.

While the grid of all settings has at most ``MAX_GRID_SETTINGS`` entries (one to three exits with the default
candidate counts), every setting is evaluated at once from a histogram of the samples' rank tuples and its
cumulative sums (``evaluate_block``): the work is one pass over the samples plus one pass over the grid, never
samples times settings. Beyond that, coordinate descents over pairs of adjacent exits evaluate each pair's
whole grid the same way, with the other exits fixed; descents that trade accuracy against cost at several
rates trace the front and seed the search for a target (``calibrate``).

Cost model: ``full_macs`` is the backbone without exits (100%). Leaving at exit k costs the backbone up to
exit k plus every branch evaluated on the way; an exit that is off is not evaluated (its branch costs nothing
when ``branch_macs`` are known).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError
from .criteria import CriterionArg, ExitCriterion, criteria_list, rule_threshold
from .decisions import decide_exits

#: quantile levels per exit by number of early exits (more exits: ``DESCENT_CANDIDATES``)
DEFAULT_CANDIDATES = {1: 200, 2: 200, 3: 100}
DESCENT_CANDIDATES = 50
#: the largest grid evaluated whole; larger spaces are searched by coordinate descent
MAX_GRID_SETTINGS = 1_500_000
MAX_SWEEPS = 10
#: elements of the (settings x exits x samples) block evaluated at a time by ``evaluate_settings``
CHUNK_ELEMENTS = 1 << 24
#: top-1 points given up per point of MACs fraction, in the descents that trace the front past the grid
TRADE_RATES = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


# --------------------------------------------------------------------------- costs and points
@dataclass
class ExitCosts:
    """MACs per sample of each way out of the model, and of the backbone alone (the 100% reference)."""

    #: leaving at each exit with every branch on the way evaluated; the final classifier last
    macs_per_exit: List[float]
    #: the backbone without exits
    full_macs: float
    #: each early exit's own branch MACs (saved when the exit is off); None: unknown, counted as always paid
    branch_macs: Optional[List[float]] = None

    def __post_init__(self) -> None:
        self.macs_per_exit = [float(m) for m in self.macs_per_exit]
        if len(self.macs_per_exit) < 2:
            raise ConfigError("calibration needs MACs for at least one early exit and the final classifier")
        if self.branch_macs is not None:
            self.branch_macs = [float(b) for b in self.branch_macs]
            if len(self.branch_macs) != self.num_exits:
                raise ConfigError(f"need one branch MAC count per early exit ({self.num_exits}), "
                                  f"got {len(self.branch_macs)}")
        if not (math.isfinite(self.full_macs) and self.full_macs > 0):
            raise ConfigError(f"the backbone's MACs must be a positive number, got {self.full_macs!r}")

    @property
    def num_exits(self) -> int:
        """Number of early exits."""
        return len(self.macs_per_exit) - 1

    def expected(self, counts: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Average MACs per sample of settings with (M, K+1) samples per output and (M, K) active exits."""
        branch = torch.tensor(self.branch_macs or [0.0] * self.num_exits, dtype=torch.float64)
        spent = torch.cat([branch.cumsum(0), branch.sum().reshape(1)])
        base = torch.tensor(self.macs_per_exit, dtype=torch.float64) - spent
        paid = (active.to(torch.float64) * branch).cumsum(1)
        paid = torch.cat([paid, paid[:, -1:]], dim=1)
        return ((base + paid) * counts).sum(1) / counts.sum(1).clamp_min(1.0)


@dataclass
class TradeoffPoint:
    """One threshold setting and what it gives: top-1 (0-100), MACs per sample, share of samples per output."""

    thresholds: List[Optional[float]]
    top1: float
    expected_macs: float
    macs_fraction: float
    #: percentage of samples leaving at each output, the final classifier last
    taken_pct: List[float]

    def to_dict(self) -> Dict[str, Any]:
        """Plain types (for JSON)."""
        return {"thresholds": list(self.thresholds), "top1": self.top1, "expected_macs": self.expected_macs,
                "macs_fraction": self.macs_fraction, "taken_pct": list(self.taken_pct)}


def measure_point(exit_logits: Sequence[torch.Tensor], targets: torch.Tensor, criteria: CriterionArg,
                  thresholds: Sequence[Optional[float]], costs: ExitCosts) -> TradeoffPoint:
    """The figures of ``thresholds`` on these logits, decided by ``decide_exits`` (real inference's rule)."""
    num_exits = len(exit_logits) - 1
    crits = criteria_list(criteria, num_exits)
    _, chosen = decide_exits(exit_logits, crits, list(thresholds))
    counts = torch.bincount(chosen, minlength=num_exits + 1).to(torch.float64)
    correct = sum(float(((l.argmax(dim=1) == targets) & (chosen == k)).sum()) for k, l in enumerate(exit_logits))
    active = torch.tensor([[t is not None or c.stateful for t, c in zip(thresholds, crits)]])
    macs = float(costs.expected(counts.unsqueeze(0), active)[0])
    n = max(int(targets.shape[0]), 1)
    return TradeoffPoint(thresholds=list(thresholds), top1=100.0 * correct / n, expected_macs=macs,
                         macs_fraction=macs / costs.full_macs, taken_pct=(100.0 * counts / n).tolist())


# --------------------------------------------------------------------------- the search space
@dataclass
class Settings:
    """Evaluated threshold settings: a candidate index per exit and the figures on the calibration split."""

    index: torch.Tensor    # (M, K) long
    correct: torch.Tensor  # (M,) float64: correctly classified samples
    counts: torch.Tensor   # (M, K+1) float64: samples leaving at each output
    macs: torch.Tensor     # (M,) float64: expected MACs per sample

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @staticmethod
    def concat(parts: Sequence["Settings"]) -> "Settings":
        """All settings of ``parts``, in order."""
        return Settings(*(torch.cat([getattr(p, f) for p in parts]) for f in ("index", "correct", "counts", "macs")))


@dataclass
class SearchSpace:
    """Candidate thresholds per exit and every calibration sample's rank among them (decisions cached)."""

    criteria: List[ExitCriterion]
    #: per exit, loosest first; candidate index ``len(thresholds[k])`` means the exit is off
    thresholds: List[List[float]]
    #: (K, N): how many of exit k's candidates let sample n leave there
    ranks: torch.Tensor
    #: (K+1, N) float64: 1 where an output's arg-max is the label
    correct: torch.Tensor
    costs: ExitCosts

    @property
    def num_exits(self) -> int:
        """Number of early exits."""
        return len(self.thresholds)

    @property
    def num_samples(self) -> int:
        """Samples of the calibration split."""
        return int(self.correct.shape[1])

    @property
    def off(self) -> List[int]:
        """The candidate index that switches each exit off."""
        return [len(t) for t in self.thresholds]

    @property
    def sizes(self) -> List[int]:
        """Number of settings of each exit (candidates plus off)."""
        return [len(t) + 1 for t in self.thresholds]

    def thresholds_of(self, index: Sequence[int]) -> List[Optional[float]]:
        """Criterion thresholds of a setting (None for an exit that is off)."""
        return [values[i] if i < len(values) else None for values, i in zip(self.thresholds, index)]

    def active(self, index: torch.Tensor) -> torch.Tensor:
        """(M, K) bool: which exits are on in each setting."""
        return index < torch.tensor(self.off)

    def point(self, settings: Settings, row: int) -> TradeoffPoint:
        """Row ``row`` of ``settings`` as a TradeoffPoint."""
        n = max(self.num_samples, 1)
        macs = float(settings.macs[row])
        return TradeoffPoint(thresholds=self.thresholds_of(settings.index[row].tolist()),
                             top1=100.0 * float(settings.correct[row]) / n, expected_macs=macs,
                             macs_fraction=macs / self.costs.full_macs,
                             taken_pct=(100.0 * settings.counts[row] / n).tolist())


def check_calibratable(criteria: Sequence[ExitCriterion]) -> None:
    """ConfigError unless every criterion is a stateless confidence bound (patience is not)."""
    for k, crit in enumerate(criteria):
        if crit.stateful:
            raise ConfigError(
                f"exit {k + 1} uses the {crit.name} criterion, whose threshold is an integer count of agreeing "
                f"exits rather than a confidence bound; calibration searches confidence thresholds, so set "
                f"`patience:` by hand or calibrate an entropy, max_prob or margin criterion")


def criterion_threshold(criterion: ExitCriterion, cut: float) -> Optional[float]:
    """The threshold under which a sample leaves when its confidence exceeds ``cut``; None if not valid."""
    try:
        value = float(criterion.threshold_for(cut))
    except (NotImplementedError, AttributeError):
        try:
            value = rule_threshold(criterion, cut)
        except NotImplementedError:
            raise ConfigError(f"the {criterion.name} criterion cannot be calibrated: it does not say which "
                              f"threshold matches a confidence (its leave rule, or ExitCriterion.threshold_for)"
                              ) from None
    if not math.isfinite(value) or criterion.check_threshold(value) is not None:
        return None
    return value


def exit_candidates(criterion: ExitCriterion, logits: torch.Tensor, count: int
                    ) -> Tuple[List[float], torch.Tensor]:
    """(thresholds loosest first, (Q, N) bool decisions) for one exit, from ``count`` confidence quantiles.

    The loosest candidate comes from the confidence of uniform logits (nearly every sample leaves); candidates
    no sample passes are dropped (off does the same for free), as are candidates with identical decisions.
    """
    conf = criterion.confidence(logits).to(torch.float64)
    levels = torch.linspace(0.0, 1.0, max(count, 2), dtype=torch.float64)
    cuts = torch.quantile(conf, levels).unique().tolist()
    floor = float(criterion.confidence(torch.zeros(1, logits.shape[1], dtype=logits.dtype))[0])
    values: List[float] = []
    for cut in [floor, *cuts]:
        value = criterion_threshold(criterion, cut)
        if value is not None and value not in values:
            values.append(value)
    if not values:
        return [], torch.zeros(0, logits.shape[0], dtype=torch.bool)
    fires = candidate_decisions(criterion, logits, values)
    taken = fires.sum(dim=1).tolist()
    order = sorted((i for i in range(len(values)) if taken[i] > 0), key=lambda i: (-taken[i], i))
    fires = fires[order]
    if bool((fires[1:] & ~fires[:-1]).any()):
        raise ConfigError(f"the {criterion.name} criterion cannot be calibrated: its exit decisions are not "
                          f"monotone in the threshold")
    keep = [j for j in range(len(order)) if j == 0 or taken[order[j]] != taken[order[j - 1]]]
    return [values[order[j]] for j in keep], fires[keep]


def candidate_decisions(criterion: ExitCriterion, logits: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    """(Q, N) ``criterion.exit_mask(logits, v)`` for every threshold ``v`` of ``values``.

    One call with a (Q, 1) threshold column (in the logits' dtype, as a float threshold is compared) when the
    criterion broadcasts and agrees with its per-threshold calls on a few rows; else one call per threshold.
    """
    column = torch.tensor(list(values), dtype=logits.dtype).unsqueeze(1)
    try:
        fires = criterion.exit_mask(logits, column)  # type: ignore[arg-type]
    except (TypeError, RuntimeError, ValueError):
        fires = None
    if isinstance(fires, torch.Tensor) and fires.shape == (len(values), logits.shape[0]):
        rows = sorted({0, len(values) // 2, len(values) - 1})
        if all(torch.equal(fires[r], criterion.exit_mask(logits, values[r])) for r in rows):
            return fires.to(torch.bool)
    return torch.stack([criterion.exit_mask(logits, v) for v in values])


def build_space(exit_logits: Sequence[torch.Tensor], targets: torch.Tensor, criteria: CriterionArg,
                costs: ExitCosts, candidates: Optional[int] = None) -> SearchSpace:
    """Candidates, ranks and correctness for every exit from cached logits (final classifier's last)."""
    num_exits = len(exit_logits) - 1
    if num_exits < 1:
        raise ConfigError("calibration needs at least one early exit besides the final classifier")
    if costs.num_exits != num_exits:
        raise ConfigError(f"{num_exits + 1} outputs need {num_exits + 1} MAC counts, got {costs.num_exits + 1}")
    if int(targets.shape[0]) == 0 or any(int(l.shape[0]) != int(targets.shape[0]) for l in exit_logits):
        raise ConfigError("calibration needs the same, non-zero number of samples for every exit and the targets")
    if isinstance(criteria, (str, ExitCriterion)):
        criteria = [criteria] * num_exits
    if len(criteria) != num_exits:
        raise ConfigError(f"need one criterion per early exit ({num_exits}), got {len(criteria)}")
    crits = criteria_list(criteria, num_exits)
    check_calibratable(crits)
    count = candidates if candidates is not None else DEFAULT_CANDIDATES.get(num_exits, DESCENT_CANDIDATES)
    if count < 1:
        raise ConfigError(f"the number of candidate thresholds per exit must be >= 1, got {count}")
    thresholds, ranks = [], []
    for crit, logits in zip(crits, exit_logits[:-1]):
        values, fires = exit_candidates(crit, logits.detach(), count)
        thresholds.append(values)
        ranks.append(fires.sum(dim=0))
    correct = torch.stack([l.argmax(dim=1) == targets for l in exit_logits]).to(torch.float64)
    return SearchSpace(crits, thresholds, torch.stack(ranks).long(), correct, costs)


# --------------------------------------------------------------------------- evaluating settings
def grid_index(sizes: Sequence[int]) -> torch.Tensor:
    """(prod(sizes), K) every combination of candidate indices, last exit fastest."""
    axes = torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=1)


def evaluate_grid(space: SearchSpace) -> Settings:
    """Every setting of ``space`` at once (see ``evaluate_block``)."""
    return evaluate_block(space, space.off, 0, space.num_exits)


def first_firing(fires: torch.Tensor, offset: int, default: int) -> torch.Tensor:
    """Per sample (column of the (R, N) ``fires``): ``offset`` + its first firing row, else ``default``."""
    if fires.shape[0] == 0:
        return torch.full((fires.shape[1],), default, dtype=torch.long)
    first = fires.to(torch.uint8).argmax(dim=0) + offset
    return torch.where(fires.any(dim=0), first, torch.full_like(first, default))


def evaluate_block(space: SearchSpace, current: Sequence[int], first: int, last: int) -> Settings:
    """Every setting equal to ``current`` outside exits ``first .. last - 1``, which take all their values.

    Samples leaving at a fixed exit before the block are counted once. The others are binned by their ranks
    at the block's exits, each carrying where it goes after the block (a later fixed exit or the final
    classifier); cumulative sums over the bins give the figures of every block setting at once, at a cost
    that does not grow with the number of settings times the number of samples.
    """
    k_exits, n, sizes = space.num_exits, space.num_samples, space.sizes
    block, width = sizes[first:last], last - first
    positions = torch.arange(n)
    flat_correct = space.correct.reshape(-1)
    fixed = space.ranks > torch.tensor(list(current), dtype=torch.long).unsqueeze(1)
    head = first_firing(fixed[:first], 0, k_exits)
    reach = head == k_exits
    tail = first_firing(fixed[last:], last, k_exits)
    head_counts = torch.bincount(head[~reach], minlength=k_exits + 1).to(torch.float64)
    head_correct = flat_correct[head * n + positions][~reach].sum()
    weights = torch.cat([torch.ones(1, int(reach.sum()), dtype=torch.float64),
                         space.correct[first:last][:, reach],
                         flat_correct[tail * n + positions][reach].unsqueeze(0),
                         torch.nn.functional.one_hot(tail[reach] - last, k_exits + 1 - last).T.to(torch.float64)])
    cell = torch.zeros(int(reach.sum()), dtype=torch.long)
    for k in range(first, last):
        cell = cell * sizes[k] + space.ranks[k][reach]
    bins = torch.zeros(weights.shape[0], math.prod(block), dtype=torch.float64).index_add_(1, cell, weights)
    bins = bins.reshape(weights.shape[0], *block)
    for dim in range(1, width + 1):
        bins = bins.cumsum(dim)

    def past(m: int) -> torch.Tensor:
        """Weights of the reaching samples not leaving at the block's first m exits, by block setting."""
        return bins[(slice(None),) * (1 + m) + (slice(-1, None),) * (width - m)]

    counts: List[torch.Tensor] = [head_counts[o].expand(block) for o in range(k_exits + 1)]
    correct = head_correct.expand(block)
    for j in range(width):
        before, after = past(j), past(j + 1)
        counts[first + j] = counts[first + j] + (before[0] - after[0])
        correct = correct + (before[1 + j] - after[1 + j])
    end = past(width)
    correct = correct + end[1 + width]
    for o in range(last, k_exits + 1):
        counts[o] = counts[o] + end[2 + width + o - last]
    counts_flat = torch.stack([c.expand(block).reshape(-1) for c in counts], dim=1)
    index = torch.tensor(list(current), dtype=torch.long).repeat(counts_flat.shape[0], 1)
    index[:, first:last] = grid_index(block)
    macs = space.costs.expected(counts_flat, space.active(index))
    return Settings(index, correct.expand(block).reshape(-1), counts_flat, macs)


def evaluate_settings(space: SearchSpace, index: torch.Tensor) -> Settings:
    """The settings of ``index`` (M, K), sample by sample in chunks."""
    k_exits, n = space.num_exits, space.num_samples
    flat_correct = space.correct.reshape(-1)
    positions = torch.arange(n)
    chunk = max(1, CHUNK_ELEMENTS // max(1, k_exits * n))
    corrects, all_counts = [], []
    for part in index.split(chunk):
        fires = space.ranks.unsqueeze(0) > part.unsqueeze(2)
        fires = torch.cat([fires, torch.ones(part.shape[0], 1, n, dtype=torch.bool)], dim=1)
        taken = fires.to(torch.uint8).argmax(dim=1)  # the first output that fires
        corrects.append(flat_correct[taken * n + positions].sum(dim=1))
        counts = torch.zeros(part.shape[0], k_exits + 1, dtype=torch.float64)
        all_counts.append(counts.scatter_add_(1, taken, torch.ones(taken.shape, dtype=torch.float64)))
    counts = torch.cat(all_counts)
    return Settings(index, torch.cat(corrects), counts, space.costs.expected(counts, space.active(index)))


# --------------------------------------------------------------------------- searching
#: ranking keys of settings, most important first; higher is better
Keys = Callable[[Settings], List[torch.Tensor]]


def best_row(settings: Settings, keys: Keys) -> int:
    """The row with the lexicographically largest keys (ties: the last such row)."""
    columns = [k.numpy() for k in keys(settings)]
    return int(np.lexsort(columns[::-1])[-1])


def _key_of(settings: Settings, keys: Keys, row: int) -> Tuple[float, ...]:
    return tuple(float(k[row]) for k in keys(settings))


def coordinate_descent(space: SearchSpace, keys: Keys, start: Sequence[int]) -> Settings:
    """Improve ``start`` by ``keys`` one pair of adjacent exits at a time; every setting evaluated on the way."""
    current, sizes = list(start), space.sizes
    if space.num_exits == 1:
        return evaluate_grid(space)
    explored: List[Settings] = []
    for _ in range(MAX_SWEEPS):
        moved = False
        for first in range(space.num_exits - 1):
            found = evaluate_block(space, current, first, first + 2)
            explored.append(found)
            here = current[first] * sizes[first + 1] + current[first + 1]
            best = best_row(found, keys)
            if _key_of(found, keys, best) > _key_of(found, keys, here):
                current, moved = found.index[best].tolist(), True
        if not moved:
            break
    return Settings.concat(explored)


def uses_grid(space: SearchSpace) -> bool:
    """True when every setting of ``space`` is evaluated at once (the grid is small enough)."""
    return math.prod(space.sizes) <= MAX_GRID_SETTINGS


def trade_keys(space: SearchSpace, rate: float) -> Keys:
    """Keys ranking settings by top-1 points minus ``rate`` times the MACs percentage."""
    n, full = max(space.num_samples, 1), space.costs.full_macs

    def keys(s: Settings) -> List[torch.Tensor]:
        return [100.0 * s.correct / n - rate * 100.0 * s.macs / full, s.index.sum(dim=1).to(torch.float64)]
    return keys


def explore(space: SearchSpace) -> Settings:
    """The whole grid when it is small enough, else descents for a range of accuracy/cost exchange rates."""
    if uses_grid(space):
        return evaluate_grid(space)
    return Settings.concat([coordinate_descent(space, trade_keys(space, r), space.off) for r in TRADE_RATES])


def front_rows(settings: Settings) -> List[int]:
    """Rows not dominated by another (no other is at most as costly and more accurate), cheapest first."""
    macs, correct = settings.macs.numpy(), settings.correct.numpy()
    order = np.lexsort((-correct, macs))
    ordered = correct[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(ordered)[:-1]])
    return order[ordered > best_before].tolist()


def front_points(space: SearchSpace, settings: Settings) -> List[TradeoffPoint]:
    """The Pareto front of ``settings`` as points, cheapest first."""
    return [space.point(settings, row) for row in front_rows(settings)]


def pareto_front(exit_logits: Sequence[torch.Tensor], targets: torch.Tensor, criteria: CriterionArg,
                 macs_per_exit: Sequence[float], full_macs: float, candidates: Optional[int] = None, *,
                 branch_macs: Optional[Sequence[float]] = None) -> List[TradeoffPoint]:
    """Top-1 vs expected MACs over the searched threshold settings, non-dominated points only, cheapest first.

    ``candidates`` is the number of confidence quantiles tried per exit (default by number of exits).
    """
    costs = ExitCosts(list(macs_per_exit), float(full_macs), None if branch_macs is None else list(branch_macs))
    space = build_space(exit_logits, targets, criteria, costs, candidates)
    return front_points(space, explore(space))
