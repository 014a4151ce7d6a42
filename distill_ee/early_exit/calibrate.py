"""Threshold calibration: per-exit thresholds that meet an accuracy or cost target on the validation split.

Targets (``CalibrationTarget``; the sample app parses them from the CLI's text):

* ``drop=0.5``            top-1 may fall at most 0.5 points below the final exit's (validation); among the
                          settings that allow it, the one with the lowest expected MACs per sample;
* ``macs=0.4`` (or 40%)   expected MACs per sample at most 40% of the backbone's; the most accurate such setting;
* ``proportions=0.5,0.3`` a fixed share of all samples leaves at each early exit, in order (the rest reach the
                          final classifier); thresholds are set exit by exit on the samples still running.
* ``latency=0.5`` (or 50%) as ``macs``, but priced in measured seconds per sample of each stage and branch in
                          the runtime the model will run in (``LatencyProfile``): MACs mislead on CPU;
* ``budget=0.5`` (or 50%) MSDNet's budgeted batch classification (Huang et al., 2018, section 4): the shares
                          leaving at the outputs follow a geometric law q_k ~ (1 - q)^(k-1), with q solved so
                          that the expected MACs per sample are the budget; thresholds then give those shares,
                          as for ``proportions``.

100% is the backbone without exits (the model's own MACs); leaving at an exit costs the backbone up to it plus
every branch evaluated on the way, so a fraction above 100% is possible when few samples leave early.

Calibration works on logits cached once per split (``collect_exit_logits``) and searches the trade-off space of
``tradeoff`` (candidate thresholds from confidence quantiles; every setting of up to three exits at once, a
coordinate descent over pairs of exits beyond). It only ever receives the validation split; the test split
is measured afterwards (``measure_exits``), at the thresholds already chosen. Optionally each early exit's
logits are temperature-scaled first (fitted on validation); ``calibrate_exits`` then folds the temperatures
into the branches, so inference needs nothing new. The patience criterion (an integer count, not a
confidence bound) is refused with a ConfigError.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..modules import eval_mode, unwrap
from .cost import stage_macs
from .criteria import CriterionArg, ExitCriterion
from .deciders import LearnedCriterion
from .decisions import decide_exits
from .exits import EarlyExits
from .multi_exit import MultiExitModel
from .risk import (Certificate, Guarantee, certify_sequence, clopper_pearson_upper, consistency_ok,
                   smallest_certifiable, split_indices)
from .stats import collect_exit_logits
from .temperature import apply_temperatures, fit_temperatures, fold_temperatures
from .tradeoff import (ExitCosts, Keys, SearchSpace, Settings, TradeoffPoint, best_row, build_space,
                       coordinate_descent, criterion_threshold, evaluate_grid, evaluate_settings, explore,
                       front_points, front_rows, measure_point, uses_grid)

TARGET_KINDS = ("drop", "macs", "proportions", "budget", "latency")
#: targets whose cost is time measured in a runtime, not MACs
TIME_KINDS = ("latency",)


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class CalibrationTarget:
    """What the thresholds must achieve on the validation split: ``kind`` and its number(s)."""

    kind: str
    values: Tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"unknown calibration target kind {self.kind!r} (valid: {', '.join(TARGET_KINDS)})")
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in self.values):
            raise ConfigError(f"calibration target {self.kind}={list(self.values)}: every value must be a finite "
                              "number")
        if self.kind != "proportions" and len(self.values) != 1:
            raise ConfigError(f"calibration target {self.text!r}: {self.kind} takes one number, e.g. "
                              f"{self.kind}=0.5")
        check_target_range(self.kind, self.values, self.text)

    @property
    def value(self) -> float:
        """The number of a ``drop`` or ``macs`` target."""
        return self.values[0]

    @property
    def text(self) -> str:
        """The target as written on the command line."""
        return f"{self.kind}={','.join(format(v, 'g') for v in self.values)}"

    def describe(self) -> str:
        """A sentence for logs."""
        if self.kind == "drop":
            return f"top-1 at most {self.value:g} points below the final exit, fewest MACs"
        if self.kind == "macs":
            return f"at most {100 * self.value:g}% of the backbone's MACs per sample, best top-1"
        if self.kind == "latency":
            return f"at most {100 * self.value:g}% of the backbone's measured time per sample, best top-1"
        if self.kind == "budget":
            return (f"MSDNet's budgeted batch rule: shares per exit on a geometric law averaging "
                    f"{100 * self.value:g}% of the backbone's MACs")
        return "samples leaving at the early exits: " + ", ".join(f"{100 * v:g}%" for v in self.values)

    def guides(self, final_top1: float) -> Dict[str, float]:
        """The limit to draw on the trade-off plot (``top1`` floor or ``macs_fraction`` budget)."""
        if self.kind == "drop":
            return {"top1": final_top1 - self.value}
        if self.kind in ("macs", "budget", "latency"):
            return {"macs_fraction": self.value}
        return {}


def check_target_range(kind: str, values: Tuple[float, ...], text: str) -> None:
    """ConfigError (naming the target as ``text``) unless every value is in its kind's range."""
    if kind == "drop" and not 0.0 <= values[0] <= 100.0:
        raise ConfigError(f"calibration target {text!r}: drop is in top-1 points, between 0 and 100")
    if kind in ("macs", "budget", "latency") and not 0.0 < values[0] <= 1.0:
        what = "measured time" if kind == "latency" else "MACs"
        raise ConfigError(f"calibration target {text!r}: {kind} is a fraction of the backbone's {what} in (0, 1], "
                          f"e.g. {kind}=0.4 or {kind}=40%")
    if kind == "proportions":
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise ConfigError(f"calibration target {text!r}: each proportion is a share of samples in [0, 1]")
        if sum(values) > 1.0 + 1e-9:
            raise ConfigError(f"calibration target {text!r}: the proportions sum to {sum(values):g}, more than 1")


# --------------------------------------------------------------------------- result
@dataclass
class CalibrationResult:
    """Calibrated thresholds (and temperatures) with the validation figures they give."""

    target: CalibrationTarget
    criteria: List[str]
    #: the chosen setting and its validation figures
    chosen: TradeoffPoint
    final_top1: float
    temperatures: Optional[List[float]]
    #: threshold settings evaluated (for ``proportions``: those behind the front drawn next to the choice)
    settings_searched: int
    #: wall-clock time of the whole calibration on cached logits (temperatures, search, front)
    seconds: float
    #: non-dominated settings of the search (validation), cheapest first
    front: List[TradeoffPoint] = field(default_factory=list, repr=False)
    #: every sample through the final classifier (all exits off)
    final_point: Optional[TradeoffPoint] = None
    #: what a guaranteed calibration certified (None for a plain one)
    certificate: Optional[Certificate] = None
    #: front points the certificate covers (certified settings, measured on the whole validation split)
    certified_points: List[TradeoffPoint] = field(default_factory=list, repr=False)

    @property
    def thresholds(self) -> List[Optional[float]]:
        """One threshold per early exit (None: the exit is off)."""
        return list(self.chosen.thresholds)

    @property
    def top1(self) -> float:
        """Validation top-1 (0-100) of the multi-exit model at the chosen thresholds."""
        return self.chosen.top1

    @property
    def drop(self) -> float:
        """Validation top-1 points lost against the final exit (negative: gained)."""
        return self.final_top1 - self.chosen.top1

    @property
    def expected_macs(self) -> float:
        """Validation average MACs per sample."""
        return self.chosen.expected_macs

    @property
    def macs_fraction(self) -> float:
        """Expected MACs as a fraction of the backbone's."""
        return self.chosen.macs_fraction

    @property
    def taken_pct(self) -> List[float]:
        """Percentage of validation samples leaving at each output, the final classifier last."""
        return list(self.chosen.taken_pct)

    def figures(self) -> Dict[str, Any]:
        """The validation figures as plain types."""
        return split_figures(self.chosen, self.final_top1)

    def to_dict(self) -> Dict[str, Any]:
        """Plain types, for summary.json and checkpoints."""
        out = {"target": self.target.text, "criteria": list(self.criteria), "thresholds": self.thresholds,
               "temperatures": None if self.temperatures is None else list(self.temperatures),
               "valid": self.figures(), "settings_searched": self.settings_searched, "seconds": self.seconds}
        if self.certificate is not None:
            out["guarantee"] = self.certificate.to_dict()
        return out

    def yaml_snippet(self, exit_names: Sequence[str]) -> str:
        """The ``exits:`` lines with the calibrated thresholds, to paste into the schedule's early-exit instance."""
        names = list(exit_names)
        if len(names) != len(self.thresholds):
            raise ConfigError(f"need {len(self.thresholds)} exit names, got {len(names)}")
        lines = [f"# calibrated on the validation split for {self.target.text}: top-1 {self.top1:.2f}% "
                 f"(final exit {self.final_top1:.2f}%), {100 * self.macs_fraction:.1f}% of the backbone's MACs"]
        if self.temperatures is not None:
            lines.append("# temperatures " + ", ".join(f"{t:.4g}" for t in self.temperatures)
                         + " are folded into the branch weights (saved with the checkpoint)")
        lines.append("exits:")
        for name, threshold in zip(names, self.thresholds):
            lines.append(f"  {name}:")
            lines.append(f"    threshold: {yaml_float(threshold)}" + ("  # off" if threshold is None else ""))
        return "\n".join(lines) + "\n"


def yaml_float(value: Optional[float]) -> str:
    """A float as YAML 1.1 reads it back (``1e-05`` would be a string there, ``1.0e-05`` is not)."""
    if value is None:
        return "null"
    text = repr(float(value))
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def split_figures(point: TradeoffPoint, final_top1: float, names: Optional[Sequence[str]] = None
                  ) -> Dict[str, Any]:
    """``top1, final_top1, drop, expected_macs, macs_fraction, taken_pct`` of one split (``taken_pct`` a dict
    by output name when ``names`` are given)."""
    taken: Any = list(point.taken_pct) if names is None else dict(zip(names, point.taken_pct))
    return {"top1": point.top1, "final_top1": final_top1, "drop": final_top1 - point.top1,
            "expected_macs": point.expected_macs, "macs_fraction": point.macs_fraction, "taken_pct": taken}


# --------------------------------------------------------------------------- calibration on cached logits
def calibrate(exit_logits: List[torch.Tensor], targets: torch.Tensor, criteria: CriterionArg,
              macs_per_exit: List[float], full_macs: float, target: CalibrationTarget,
              temperature: bool = False, *, branch_macs: Optional[List[float]] = None,
              candidates: Optional[int] = None, guarantee: Optional[Guarantee] = None) -> CalibrationResult:
    """Thresholds meeting ``target`` on these (validation) logits; the final classifier's logits last.

    ``macs_per_exit``: MACs per sample of leaving at each output with every branch on the way evaluated;
    ``full_macs``: the backbone without exits (100%); ``branch_macs``: each branch's own MACs, when known, so
    that switching an exit off saves its branch. ``temperature``: fit and apply one temperature per exit first.
    ``guarantee``: certify the choice for new data (``risk.py``): for ``drop``, the cheapest setting whose
    loss rate is certified at most the target; for ``macs``, the plain choice made on one part of the split and
    its loss rate bounded on the other.
    """
    if guarantee is not None:
        return _calibrate_guaranteed(exit_logits, targets, criteria, ExitCosts(
            list(macs_per_exit), float(full_macs), None if branch_macs is None else list(branch_macs)), target,
            temperature, candidates, guarantee)
    start = time.perf_counter()
    temperatures = fit_temperatures(exit_logits, targets) if temperature else None
    logits = apply_temperatures(exit_logits, temperatures)
    costs = ExitCosts(list(macs_per_exit), float(full_macs), None if branch_macs is None else list(branch_macs))
    space = build_space(logits, targets, criteria, costs, candidates)
    if target.kind in ("proportions", "budget"):
        shares = target.values if target.kind == "proportions" else \
            geometric_shares(costs.macs_per_exit, costs.full_macs, target.value)[:-1]
        thresholds = _proportion_thresholds(space, logits, shares)
        settings = explore(space)
    else:
        settings, row = _search(space, _target_keys(space, target))
        thresholds = space.thresholds_of(settings.index[row].tolist())
    chosen = measure_point(logits, targets, space.criteria, thresholds, costs)
    final = measure_point(logits, targets, space.criteria, [None] * space.num_exits, costs)
    return CalibrationResult(target=target, criteria=[c.name for c in space.criteria], chosen=chosen,
                             final_top1=final.top1, temperatures=temperatures, settings_searched=len(settings),
                             seconds=time.perf_counter() - start, front=front_points(space, settings),
                             final_point=final)


def _calibrate_guaranteed(exit_logits: List[torch.Tensor], targets: torch.Tensor, criteria: CriterionArg,
                          costs: ExitCosts, target: CalibrationTarget, temperature: bool,
                          candidates: Optional[int], guarantee: Guarantee) -> CalibrationResult:
    """Pareto testing: the front found on the search part, tested in order on the test part (``risk.py``).

    Textual consistency needs no labels: samples whose target is -1 (unlabelled) take part in the search and
    the test; accuracy figures are computed on the labelled ones.
    """
    if target.kind in ("proportions", "budget"):
        raise ConfigError("a guarantee applies to drop= and macs= targets, not to fixed proportions or budget=")
    labelled = targets >= 0
    if not bool(labelled.all()) and (guarantee.consistency != "textual" or target.kind != "drop" or temperature):
        raise ConfigError("unlabelled samples (target -1) serve only a drop= target with textual consistency and "
                          "no temperature fitting")
    if not bool(labelled.any()):
        raise ConfigError("calibration needs some labelled samples to report accuracy")
    start = time.perf_counter()
    search, test = split_indices(int(targets.shape[0]), guarantee.search_share, guarantee.seed)
    temperatures = fit_temperatures([l[search] for l in exit_logits], targets[search]) if temperature else None
    logits = apply_temperatures(exit_logits, temperatures)
    ok = consistency_ok(logits, targets, guarantee.consistency)
    space = build_space([l[search] for l in logits], targets[search], criteria, costs, candidates)
    if target.kind == "drop":
        space.correct = ok[:, search]  # the search ranks settings by their loss, not their accuracy
        settings = explore(space)
        order = [space.thresholds_of(settings.index[r].tolist()) for r in reversed(front_rows(settings))]
        if order[0] != [None] * space.num_exits:
            order.insert(0, [None] * space.num_exits)  # the safest setting (no exit) is tested first
        certificate, thresholds = _test_in_order(order, logits, ok, test, space, target.value / 100.0, guarantee)
    else:  # the plain choice on the search part; one setting tested, so its bound needs no correction
        settings, row = _search(space, _target_keys(space, target))
        certificate, thresholds = _test_in_order([space.thresholds_of(settings.index[row].tolist())], logits, ok,
                                                 test, space, 1.0, guarantee)
        certificate.target = None
    crits = space.criteria
    logits, targets = [l[labelled] for l in logits], targets[labelled]
    chosen = measure_point(logits, targets, crits, thresholds, costs)
    final = measure_point(logits, targets, crits, [None] * space.num_exits, costs)
    certified = [measure_point(logits, targets, crits, t["thresholds"], costs)
                 for t in certificate.tested[:certificate.certified]]
    front = [measure_point(logits, targets, crits, t["thresholds"], costs) for t in certificate.tested]
    return CalibrationResult(target=target, criteria=[c.name for c in crits], chosen=chosen, final_top1=final.top1,
                             temperatures=temperatures, settings_searched=len(certificate.tested),
                             seconds=time.perf_counter() - start, front=sorted(front, key=lambda p: p.expected_macs),
                             final_point=final, certificate=certificate, certified_points=certified)


def _test_in_order(order: List[List[Optional[float]]], logits: List[torch.Tensor], ok: torch.Tensor,
                   test: torch.Tensor, space: SearchSpace, rate: float,
                   guarantee: Guarantee) -> Tuple[Certificate, List[Optional[float]]]:
    """Fixed-sequence testing of ``order`` on the test part; (certificate, the chosen thresholds)."""
    test_logits = [l[test] for l in logits]
    n = int(test.shape[0])
    losses = []
    for thresholds in order:
        _, exit_index = decide_exits(test_logits, space.criteria, thresholds)
        losses.append(int(n - ok[:, test].gather(0, exit_index.unsqueeze(0)).sum()))
    p_values, certified = certify_sequence(losses, n, rate, guarantee.delta)
    tested = [{"thresholds": t, "losses": k, "p_value": p} for t, k, p in zip(order, losses, p_values)]
    certificate = Certificate(guarantee.consistency, guarantee.delta, rate, int(space.num_samples), n, tested,
                              certified, smallest_target=smallest_certifiable(n, guarantee.delta))
    if certified == 0:
        return certificate, [None] * space.num_exits
    costs = [space.costs.expected(*_counts_and_active(t, logits, space)) for t in order[:certified]]
    best = min(range(certified), key=lambda i: (float(costs[i][0]), -i))
    certificate.chosen = best
    certificate.bound = clopper_pearson_upper(losses[best], n, guarantee.delta)
    return certificate, list(order[best])


def _counts_and_active(thresholds: List[Optional[float]], logits: List[torch.Tensor],
                       space: SearchSpace) -> Tuple[torch.Tensor, torch.Tensor]:
    """Samples per output (whole split) and active exits of one setting, shaped for ``ExitCosts.expected``."""
    _, exit_index = decide_exits(logits, space.criteria, thresholds)
    counts = torch.bincount(exit_index, minlength=space.num_exits + 1).to(torch.float64).unsqueeze(0)
    active = torch.tensor([[t is not None for t in thresholds]])
    return counts, active


def _target_keys(space: SearchSpace, target: CalibrationTarget) -> Keys:
    """Ranking keys for ``drop`` / ``macs``: feasible first, then the target's objective, then the other
    figure, then the stricter setting (higher candidate indices)."""
    n = space.num_samples
    final_correct = float(space.correct[-1].sum())
    if target.kind == "drop":
        floor = final_correct - target.value / 100.0 * n - 1e-6

        def drop_keys(s: Settings) -> List[torch.Tensor]:
            return [(s.correct >= floor).double(), -s.macs, s.correct, s.index.sum(dim=1).double()]
        return drop_keys
    budget = target.value * space.costs.full_macs * (1 + 1e-9)

    def macs_keys(s: Settings) -> List[torch.Tensor]:
        return [(s.macs <= budget).double(), s.correct, -s.macs, s.index.sum(dim=1).double()]
    return macs_keys


def _search(space: SearchSpace, keys: Keys) -> Tuple[Settings, int]:
    """(settings searched, row of the best): the whole grid; or, for larger spaces, a coordinate descent by
    ``keys`` started from the best of the front-tracing descents, "all exits off" and "all leave at exit 1"."""
    if uses_grid(space):
        settings = evaluate_grid(space)
    else:
        corners = evaluate_settings(space, torch.tensor([space.off, [0] + space.off[1:]]))
        seeds = Settings.concat([explore(space), corners])
        start = seeds.index[best_row(seeds, keys)].tolist()
        settings = Settings.concat([seeds, coordinate_descent(space, keys, start)])
    row = best_row(settings, keys)
    if float(keys(settings)[0][row]) == 0.0:
        cheapest = float(settings.macs.min()) / space.costs.full_macs
        raise ConfigError(f"no threshold setting meets the budget: the cheapest searched costs "
                          f"{100 * cheapest:.1f}% of the backbone's cost on the validation split")
    return settings, row


def geometric_shares(macs_per_output: Sequence[float], full_macs: float, budget: float) -> List[float]:
    """Shares of samples per output (the final classifier last) on MSDNet's geometric law,
    q_k = (1 - q)^(k-1) / sum_j (1 - q)^(j-1), with q solved (bisection on log(1 - q)) so that
    sum_k q_k * macs_k = budget * full_macs. ConfigError when no share vector reaches the budget."""
    costs = [float(m) / float(full_macs) for m in macs_per_output]
    if budget < costs[0] - 1e-12:
        raise ConfigError(f"budget={budget:g}: even every sample leaving at the first exit costs {100 * costs[0]:.1f}% "
                          "of the backbone's MACs")

    def shares(log_base: float) -> List[float]:
        top = max(log_base * k for k in range(len(costs)))
        weights = [math.exp(log_base * k - top) for k in range(len(costs))]
        return [w / sum(weights) for w in weights]

    def cost(log_base: float) -> float:
        return sum(q * c for q, c in zip(shares(log_base), costs))

    low, high = -50.0, 50.0
    if cost(high) <= budget:
        return shares(high)
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if cost(mid) <= budget else (low, mid)
    return shares(low)


def _proportion_thresholds(space: SearchSpace, logits: Sequence[torch.Tensor],
                           proportions: Sequence[float]) -> List[Optional[float]]:
    """Exit by exit, the threshold sending ``proportions[k]`` of all samples out at exit k (closest share)."""
    if len(proportions) != space.num_exits:
        raise ConfigError(f"proportions need one share per early exit ({space.num_exits}), got {len(proportions)}")
    n = space.num_samples
    pending = torch.ones(n, dtype=torch.bool)
    thresholds: List[Optional[float]] = []
    for crit, exit_logits, share in zip(space.criteria, logits, proportions):
        want = int(round(share * n))
        threshold = _share_threshold(crit, exit_logits, pending, want) if want and bool(pending.any()) else None
        thresholds.append(threshold)
        if threshold is not None:
            pending &= ~crit.exit_mask(exit_logits, threshold)
    return thresholds


def _share_threshold(crit: ExitCriterion, logits: torch.Tensor, pending: torch.Tensor, want: int
                     ) -> Optional[float]:
    """The valid threshold letting the number of ``pending`` samples closest to ``want`` leave (ties: fewer)."""
    conf = crit.confidence(logits)[pending].to(torch.float64).sort(descending=True).values
    distinct = conf.unique().flip(0)  # descending
    position = int((distinct > conf[min(want, conf.shape[0]) - 1]).sum())  # the last wanted leaver's value
    floor = float(crit.confidence(torch.zeros(1, logits.shape[1], dtype=logits.dtype))[0])
    best: Optional[Tuple[int, float]] = None
    for cut in distinct[max(0, position - 1):position + 2].tolist() + [floor]:
        threshold = criterion_threshold(crit, cut)
        if threshold is None:
            continue
        count = int((crit.exit_mask(logits, threshold) & pending).sum())
        if best is None or (abs(count - want), count) < (abs(best[0] - want), best[0]):
            best = (count, threshold)
    return None if best is None or best[0] == 0 else best[1]


# --------------------------------------------------------------------------- exits of a model
def exit_costs(multi: MultiExitModel, model: torch.nn.Module, masks: Optional[Mapping[str, Any]] = None,
               effective: bool = False) -> ExitCosts:
    """Exit costs with every branch evaluated, the backbone's MACs and each branch's, from ``stage_macs``.

    Not ``exit_macs``: that one leaves out the branches of exits without a threshold, while calibration
    prices every exit as if on and saves a branch only where it switches the exit off.
    """
    stages, branches = stage_macs(multi, model, masks, effective)
    macs, paid = [], 0.0
    for stage, branch in zip(stages, branches):
        paid += stage + branch
        macs.append(paid)
    macs.append(float(sum(stages) + sum(branches)))
    return ExitCosts(macs, float(sum(stages)), [float(b) for b in branches])


def calibrate_exits(exits: EarlyExits, valid_batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                    target: CalibrationTarget, *, masks: Optional[Mapping[str, Any]] = None,
                    temperature: bool = False, effective: bool = False, candidates: Optional[int] = None,
                    guarantee: Optional[Guarantee] = None, costs: Optional[ExitCosts] = None) -> CalibrationResult:
    """Calibrate a model's exits on validation batches and set their thresholds (temperatures, if fitted,
    folded into the branches). ``costs``: the cost model (default: MACs; a ``latency=`` target needs one in
    measured time, ``latency.latency_costs``)."""
    if target.kind in TIME_KINDS and costs is None:
        raise ConfigError(f"calibration target {target.text!r} needs a measured latency profile")
    multi = exits.multi_exit_model()
    learned = [c.name for c in multi.criteria if isinstance(c, LearnedCriterion)]
    if temperature and learned:
        raise ConfigError(f"temperature scaling would change the logits the {learned[0]} deciders read; calibrate "
                          "their thresholds without it")
    with eval_mode(multi):
        logits, targets = collect_exit_logits(multi, valid_batches)
    costs = costs or exit_costs(multi, unwrap(exits.model), masks, effective)
    result = calibrate(logits, targets, multi.criteria, costs.macs_per_exit, costs.full_macs, target,
                       temperature, branch_macs=costs.branch_macs, candidates=candidates, guarantee=guarantee)
    if result.temperatures is not None:
        fold_temperatures(exits.exit_set, result.temperatures)
    exits.set_thresholds(result.thresholds)
    return result


def measure_exits(exits: EarlyExits, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                  masks: Optional[Mapping[str, Any]] = None, effective: bool = False,
                  costs: Optional[ExitCosts] = None) -> Tuple[TradeoffPoint, float]:
    """(figures at the exits' thresholds, final exit top-1) on ``batches``, with calibration's cost model
    (``costs``, default MACs)."""
    multi = exits.multi_exit_model()
    with eval_mode(multi):
        logits, targets = collect_exit_logits(multi, batches)
    costs = costs or exit_costs(multi, unwrap(exits.model), masks, effective)
    point = measure_point(logits, targets, multi.criteria, list(exits.thresholds), costs)
    final_top1 = 100.0 * float((logits[-1].argmax(dim=1) == targets).double().mean())
    return point, final_top1
