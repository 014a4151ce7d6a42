"""Early-exit specifications: a schedule's ``early_exits`` instance, validated, as plain dataclasses.

The schedule loader hands over one instance as a plain dict (without ``class``)::

    criterion: entropy            # default criterion of every exit (entropy, max_prob, margin, patience)
    patience: 2                   # the patience criterion's default threshold
    final_loss_weight: auto       # number, or auto = 1 - sum of the exits' weights (Distiller)
    final_name: final
    stages: [features, classifier]  # optional: cut points for models torch.fx cannot trace
    exits:                        # ordered: first exit = shallowest
      exit1: {attach: conv1, branch: [...], loss_weight: 0.3, threshold: 0.5, criterion: entropy}

A model with classifiers of its own (MSDNet, RANet) is referred to with ``attach: builtin``, which
``early_exit.builtin.expand_builtin`` writes out against the model before this validation.

Learned decisions (``early_exit.deciders``) are instance-wide, configured in the block their criterion names
(``ExitCriterion.settings_key``)::

    criterion: gate               # a gate per exit, trained with the network (Scardapane et al., 2020)
    gate: {head: [confidence_features, linear], loss_weight: 1.0, cost_weight: {start: 0, end: 0.5}}
    criterion: learned            # a decider per exit, trained after the network on the validation split
    learned_policy: {head: [...], tradeoff: 0.1}

Every value is checked by the annotations of these dataclasses, with the binder every schedule component goes
through (``distill_ee.arguments``); what ties values together (patience, learned blocks, thresholds in the
criterion's range, ``auto`` weights) is checked after. Errors are ScheduleErrors whose ``path`` is relative to
the instance (``exits.exit1.branch[2].out_features``).
"""
from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

from ..arguments import ArgumentError, Checked, PositiveInt, bind
from ..errors import ScheduleError
from ..registry import EXIT_CRITERIA, UnknownNameError, suggest
from .branch import LayerSpec, Layers
from .criteria import get_criterion
from .deciders import Head, default_head
from .exit_set import RESERVED_NAMES

#: who teaches the exits: the final classifier of the same forward pass, or a frozen snapshot of the network
DISTILLATION_TEACHERS = ("final", "frozen")
#: the cost regulariser's weight when a gate block gives none
DEFAULT_COST_WEIGHT = 0.1
#: a learned policy's trade-off when the schedule gives none
DEFAULT_TRADEOFF = 0.1
RAMP_KEYS = ("start", "end")
DEFAULT_CRITERION = "entropy"
DEFAULT_FINAL_NAME = "final"
DEFAULT_LOSS_WEIGHT = 1.0
AUTO = "auto"


@dataclass(frozen=True)
class LossWeight:
    """An exit's loss weight: constant, or linear from ``start`` to ``end`` over the policy's due epochs."""

    start: float
    end: float

    @property
    def constant(self) -> bool:
        """True when the weight does not change over epochs."""
        return self.start == self.end

    def at(self, progress: float) -> float:
        """The weight at ``progress`` through the policy's window (``Policy.progress``): ``start`` at 0,
        ``end`` at 1, linear in between."""
        if self.constant:
            return self.start
        return self.start + (self.end - self.start) * min(1.0, max(0.0, float(progress)))

    def to_config(self) -> Union[float, Dict[str, float]]:
        """A number, or ``{start, end}``."""
        return self.start if self.constant else {"start": self.start, "end": self.end}


# --------------------------------------------------------------------------- what values mean
#: a number in YAML 1.2's notation (``1e-3``, ``2.5E+4``) that PyYAML's YAML 1.1 resolver leaves a string
_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def number(value: Any) -> float:
    """A finite number; a numeric string is its number (a config read by plain ``yaml.safe_load`` holds
    ``1e-3`` as a string)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ArgumentError(f"expected a finite number, got {value!r}")
    return float(value)


def loss_weight(value: Any) -> LossWeight:
    """A loss weight: a number >= 0, or ``{start, end}`` (each >= 0) ramped over the policy's window."""
    if isinstance(value, Mapping):
        for key in value:
            if key not in RAMP_KEYS:
                raise ArgumentError(f"unknown key {key!r} of a ramped loss weight", (key,), valid=list(RAMP_KEYS),
                                    suggestions=suggest(str(key), RAMP_KEYS))
        missing = [k for k in RAMP_KEYS if k not in value]
        if missing:
            raise ArgumentError(f"a ramped loss weight needs `{missing[0]}` ({{start: 0.1, end: 1.0}})")
        start, end = (_non_negative_weight(value[k]) for k in RAMP_KEYS)
        return LossWeight(start, end)
    weight = _non_negative_weight(value)
    return LossWeight(weight, weight)


def _non_negative_weight(value: Any) -> float:
    weight = number(value)
    if weight < 0:
        raise ArgumentError(f"loss weights must be >= 0, got {weight}")
    return weight


def flag(value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ArgumentError(f"must be true or false, got {value!r}")
    return value


def criterion_name(value: Any) -> str:
    """The canonical name of a registered exit criterion (close names suggested)."""
    if not isinstance(value, str):
        raise ArgumentError(f"an exit criterion is a name, got {value!r}", valid=EXIT_CRITERIA.names())
    try:
        return EXIT_CRITERIA.canonical(value)
    except UnknownNameError as err:
        raise ArgumentError(f"unknown exit criterion {value!r}", valid=EXIT_CRITERIA.names(),
                            suggestions=err.suggestions) from None


def final_weight(value: Any) -> Union[float, str]:
    """The final classifier's loss weight: a number >= 0, or ``auto`` (1 - the exits' weights)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, str) and not _NUMBER.fullmatch(value.strip()):
        raise ArgumentError(f"final_loss_weight is a number or `auto`, got {value!r}",
                            suggestions=suggest(value, [AUTO]))
    weight = number(value)
    if weight < 0:
        raise ArgumentError(f"final_loss_weight must be >= 0, got {weight}")
    return weight


def stage_names(value: Any) -> List[str]:
    """``stages``: a non-empty list of top-level module names."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ArgumentError("`stages` must be a non-empty list of top-level module names")
    return list(value)


def non_empty_name(value: Any) -> str:
    """A non-empty name."""
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"must be a non-empty name, got {value!r}")
    return value


def exit_map(value: Any) -> Dict[str, Any]:
    """``exits``: a mapping exit name -> settings (each is read once the final classifier's name is known)."""
    if not isinstance(value, Mapping):
        raise ArgumentError(f"`exits` must be a mapping, got {type(value).__name__}")
    return dict(value)


Number = Annotated[float, Checked("a number", number)]
Weight = Annotated[LossWeight, Checked("a number >= 0 or {start, end}", loss_weight)]
Flag = Annotated[bool, Checked("true or false", flag)]
Criterion = Annotated[str, Checked("an exit criterion", criterion_name)]
Name = Annotated[str, Checked("a non-empty name", non_empty_name)]


# --------------------------------------------------------------------------- the dataclasses
@dataclass
class ExitSpec:
    """One side exit: where it attaches, its branch layers, loss weight, threshold and criterion."""

    name: str
    attach: Name
    branch: Layers
    loss_weight: Weight = LossWeight(DEFAULT_LOSS_WEIGHT, DEFAULT_LOSS_WEIGHT)
    threshold: Optional[Number] = None
    criterion: Optional[Criterion] = None

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form accepted by ``parse_early_exit_config``."""
        out: Dict[str, Any] = {"attach": self.attach, "branch": [l.to_config() for l in self.branch],
                               "loss_weight": self.loss_weight.to_config()}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.criterion is not None:
            out["criterion"] = self.criterion
        return out


@dataclass
class GateSpec:
    """``criterion: gate``: each exit's gate head, the soft-conditional loss weight and the cost weight lambda."""

    owner: ClassVar[str] = "the `gate` block"

    head: Head = field(default_factory=default_head)
    loss_weight: Weight = LossWeight(1.0, 1.0)
    cost_weight: Weight = LossWeight(DEFAULT_COST_WEIGHT, DEFAULT_COST_WEIGHT)

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form."""
        return {"head": [l.to_config() for l in self.head], "loss_weight": self.loss_weight.to_config(),
                "cost_weight": self.cost_weight.to_config()}


@dataclass
class LearnedPolicySpec:
    """``criterion: learned``: each exit's decider head and the accuracy-vs-MACs trade-off it is trained for."""

    owner: ClassVar[str] = "the `learned_policy` block"

    head: Head = field(default_factory=default_head)
    tradeoff: Number = DEFAULT_TRADEOFF

    def __post_init__(self) -> None:
        if self.tradeoff < 0:
            raise ArgumentError(f"the trade-off must be >= 0 (errors per sample that one backbone's worth of MACs is "
                                f"worth), got {self.tradeoff:g}", ("tradeoff",))

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form."""
        return {"head": [l.to_config() for l in self.head], "tradeoff": self.tradeoff}


@dataclass
class DistillationSpec:
    """``distillation``: the final classifier's softened predictions (or those of a snapshot of the network
    frozen when the policy starts) teach every exit, a term weight * T^2 * KL per exit."""

    owner: ClassVar[str] = "the `distillation` block"

    temperature: Number = 4.0
    weight: Weight = LossWeight(0.5, 0.5)
    #: who teaches the exits: the final classifier of the same forward pass, or a frozen snapshot of the network
    teacher: str = "final"

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ArgumentError(f"the temperature must be above 0, got {self.temperature:g}", ("temperature",))
        if self.teacher not in DISTILLATION_TEACHERS:
            raise ArgumentError(f"{self.teacher!r} is not a teacher", ("teacher",), valid=list(DISTILLATION_TEACHERS))

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form."""
        return {"temperature": self.temperature, "weight": self.weight.to_config(), "teacher": self.teacher}


#: the block configuring each learned criterion's deciders, by its ``settings_key``
DECIDER_BLOCKS: Dict[str, type] = {"gate": GateSpec, "learned_policy": LearnedPolicySpec}


@dataclass
class InstanceArguments:
    """What an ``early_exits`` instance may give, as written (before the exits are read in order)."""

    exits: Annotated[Dict[str, Any], Checked("a mapping exit name -> {attach, branch, loss_weight, threshold, "
                                             "criterion}", exit_map)]
    criterion: Criterion = DEFAULT_CRITERION
    patience: Optional[PositiveInt] = None
    final_loss_weight: Annotated[Union[float, str], Checked("a number >= 0 or `auto`", final_weight)] = 1.0
    final_name: Name = DEFAULT_FINAL_NAME
    stages: Optional[Annotated[List[str], Checked("a non-empty list of top-level module names", stage_names)]] = None
    gate: Optional[GateSpec] = None
    learned_policy: Optional[LearnedPolicySpec] = None
    distillation: Optional[DistillationSpec] = None
    #: IMTA's gradient equilibrium: the gradient reaching each stage is the mean of its classifiers' gradients
    gradient_equilibrium: Flag = False
    #: IMTA's inline sub-network collaboration: each exit after the first also reads the previous exit's logits
    forward_transfer: Flag = False


#: the keys an ``early_exits`` instance may give (``attach: builtin`` is expanded before validation)
INSTANCE_KEYS = ("attach", *(f.name for f in fields(InstanceArguments)))


@dataclass
class EarlyExitSpec:
    """A validated ``early_exits`` instance: ordered exits plus instance-wide settings."""

    exits: List[ExitSpec]
    criterion: str = DEFAULT_CRITERION
    patience: Optional[int] = None
    final_loss_weight: Union[float, str] = 1.0
    final_name: str = DEFAULT_FINAL_NAME
    stages: Optional[List[str]] = None
    gate: Optional[GateSpec] = None
    learned_policy: Optional[LearnedPolicySpec] = None
    distillation: Optional[DistillationSpec] = None
    gradient_equilibrium: bool = False
    forward_transfer: bool = False

    @property
    def names(self) -> List[str]:
        """Exit names in depth order (the final classifier excluded)."""
        return [e.name for e in self.exits]

    def criteria(self) -> List[str]:
        """The criterion name of every exit (per-exit override, else the instance default)."""
        return [e.criterion or self.criterion for e in self.exits]

    @property
    def decider_block(self) -> Optional[str]:
        """The instance key configuring the exits' learned deciders (``gate``, ``learned_policy``), if any."""
        return get_criterion(self.criterion).settings_key

    @property
    def decider_head(self) -> Optional[List[LayerSpec]]:
        """The head of every exit's learned decider (None when exits decide by a fixed rule)."""
        block = getattr(self, self.decider_block) if self.decider_block else None
        return block.head if block is not None else None

    def thresholds(self) -> List[Optional[float]]:
        """Every exit's threshold; an exit that gives none takes its criterion's instance-wide key (``patience``)
        or default (0.5 for learned decisions)."""
        out: List[Optional[float]] = []
        for e, crit in zip(self.exits, self.criteria()):
            criterion = get_criterion(crit)
            default = getattr(self, criterion.threshold_key) if criterion.threshold_key else criterion.default_threshold
            out.append(e.threshold if e.threshold is not None else default)
        return out

    def exit_weights(self, progress: float) -> List[float]:
        """Every exit's loss weight at ``progress`` through the policy's window."""
        return [e.loss_weight.at(progress) for e in self.exits]

    def final_weight(self, exit_weights: Sequence[float]) -> float:
        """The final classifier's weight given the exits' current weights (``auto`` = 1 - their sum)."""
        if self.final_loss_weight == AUTO:
            return 1.0 - float(sum(exit_weights))
        return float(self.final_loss_weight)

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form (numbers, strings, lists, dicts) that parses back to an equal spec."""
        out: Dict[str, Any] = {"criterion": self.criterion, "final_loss_weight": self.final_loss_weight,
                               "final_name": self.final_name,
                               "exits": {e.name: e.to_config() for e in self.exits}}
        if self.patience is not None:
            out["patience"] = self.patience
        if self.stages is not None:
            out["stages"] = list(self.stages)
        for key in ("gate", "learned_policy", "distillation"):
            block = getattr(self, key)
            if block is not None:
                out[key] = block.to_config()
        if self.gradient_equilibrium:
            out["gradient_equilibrium"] = True
        if self.forward_transfer:
            out["forward_transfer"] = True
        return out


# --------------------------------------------------------------------------- parsing
def parse_early_exit_config(config: Mapping[str, Any]) -> EarlyExitSpec:
    """Validate an ``early_exits`` instance dict (``class`` already removed) into an EarlyExitSpec."""
    try:
        return _parse(config)
    except ArgumentError as err:
        raise ScheduleError(err.message, path=_path_text(err.path), valid=err.valid,
                            suggestions=err.suggestions) from None


def _parse(config: Mapping[str, Any]) -> EarlyExitSpec:
    if not isinstance(config, Mapping):
        raise ArgumentError(f"the early-exit instance must be a mapping, got {type(config).__name__}")
    if "attach" in config:
        raise ArgumentError("`attach: builtin` names the model's own classifiers: expand it against the model "
                            "(early_exit.builtin.expand_builtin) first", ("attach",))
    given = {k: v for k, v in config.items() if k != "class"}
    if "exits" not in given:
        raise ArgumentError("an early-exit instance needs `exits` (name -> {attach, branch, ...}) or "
                            "`attach: builtin`")
    args = InstanceArguments(**bind(InstanceArguments, given, owner="the early-exit instance", mapping=True))
    if not args.exits:
        raise ArgumentError("`exits` is empty; give at least one exit", ("exits",))
    spec = EarlyExitSpec(exits=[_exit(name, raw, args.final_name) for name, raw in args.exits.items()],
                         criterion=args.criterion, patience=args.patience, final_loss_weight=args.final_loss_weight,
                         final_name=args.final_name, stages=args.stages, distillation=args.distillation,
                         gradient_equilibrium=args.gradient_equilibrium, forward_transfer=args.forward_transfer)
    _check_patience(spec, given)
    _decider_blocks(spec, args)
    _check_thresholds(spec)
    _check_auto_weight(spec)
    return spec


def _path_text(path: Sequence[Any]) -> str:
    """``("exits", "e1", "branch", 2)`` -> ``exits.e1.branch[2]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _exit_name(name: Any, final_name: str) -> str:
    path = ("exits", str(name))
    if not isinstance(name, str) or not name:
        raise ArgumentError(f"exit names must be non-empty strings, got {name!r}", path)
    if "." in name or not name.isidentifier() or keyword.iskeyword(name):
        raise ArgumentError(f"exit name {name!r} must be an identifier (letters, digits, _)", path)
    if name in RESERVED_NAMES:
        raise ArgumentError(f"exit name {name!r} is reserved (an attribute of the exits' module); choose another",
                            path)
    if name == final_name:
        raise ArgumentError(f"exit name {name!r} is the final classifier's name (final_name)", path)
    return name


def _exit(name: Any, raw: Any, final_name: str) -> ExitSpec:
    name = _exit_name(name, final_name)
    if not isinstance(raw, Mapping):
        raise ArgumentError(f"exit {name!r} must be a mapping, got {type(raw).__name__}", ("exits", name))
    try:
        return ExitSpec(name=name, **bind(ExitSpec, raw, owner=f"exit {name!r}", mapping=True, supplied=("name",)))
    except ArgumentError as err:
        raise err.under("exits", name) from None


def _check_patience(spec: EarlyExitSpec, given: Mapping[str, Any]) -> None:
    """An instance-wide threshold key (``patience``) is given exactly when a criterion of the exits needs it."""
    for key in sorted({get_criterion(n).threshold_key for n in EXIT_CRITERIA.names()} - {None}):
        keyed = [e for e, c in zip(spec.exits, spec.criteria()) if get_criterion(c).threshold_key == key]
        if key not in given:
            needed = [e.name for e in keyed if e.threshold is None]
            if needed:
                name = get_criterion(keyed[0].criterion or spec.criterion).name
                raise ArgumentError(f"the {name} criterion needs `{key}: k` (exit {needed[0]!r} has no threshold)")
        elif not keyed:
            users = [n for n in EXIT_CRITERIA.names() if get_criterion(n).threshold_key == key]
            raise ArgumentError(f"`{key}` applies only to the {' or '.join(users)} criterion", (key,), valid=users)


def _decider_blocks(spec: EarlyExitSpec, args: InstanceArguments) -> None:
    """The block of a learned criterion (``gate`` / ``learned_policy``), which applies to every exit."""
    for key in DECIDER_BLOCKS:
        if getattr(args, key) is not None and spec.decider_block != key:
            owner = next(n for n in EXIT_CRITERIA.names() if get_criterion(n).settings_key == key)
            raise ArgumentError(f"`{key}` applies to `criterion: {owner}`, but the instance's criterion is "
                                f"{spec.criterion}", (key,))
    learned = get_criterion(spec.criterion).learned
    for e in spec.exits:
        mixed = e.criterion is not None and get_criterion(e.criterion).learned != learned
        if mixed or (e.criterion is not None and learned and e.criterion != spec.criterion):
            names = ", ".join(n for n in EXIT_CRITERIA.names() if get_criterion(n).learned)
            raise ArgumentError(f"exit {e.name!r}: learned decisions ({names}) apply to every exit; set them as the "
                                f"instance's `criterion`, not per exit", ("exits", e.name, "criterion"))
    key = spec.decider_block
    if key is not None:
        setattr(spec, key, getattr(args, key) or DECIDER_BLOCKS[key]())


def _check_thresholds(spec: EarlyExitSpec) -> None:
    for e, crit, thr in zip(spec.exits, spec.criteria(), spec.thresholds()):
        if thr is None:
            continue
        criterion = get_criterion(crit)
        problem = criterion.check_threshold(thr)
        if problem:
            where = ("exits", e.name, "threshold") if e.threshold is not None else (criterion.threshold_key,)
            raise ArgumentError(f"the {crit} threshold must be {problem}, got {thr!r}", where)


def _check_auto_weight(spec: EarlyExitSpec) -> None:
    if spec.final_loss_weight != AUTO:
        return
    for label, total in (("start", sum(e.loss_weight.start for e in spec.exits)),
                         ("end", sum(e.loss_weight.end for e in spec.exits))):
        if total > 1.0 + 1e-9:
            raise ArgumentError(f"final_loss_weight `auto` is 1 - sum of the exits' loss weights, but they sum to "
                                f"{total:g} (ramp {label}); lower them or give a number", ("final_loss_weight",))
