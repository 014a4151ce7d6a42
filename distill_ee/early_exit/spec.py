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

Learned decisions (``early_exit.deciders``) are instance-wide::

    criterion: gate               # a gate per exit, trained with the network (Scardapane et al., 2020)
    gate: {head: [confidence_features, linear], loss_weight: 1.0, cost_weight: {start: 0, end: 0.5}}
    criterion: learned            # a decider per exit, trained after the network on the validation split
    learned_policy: {head: [...], tradeoff: 0.1}

Errors are ScheduleErrors whose ``path`` is relative to the instance (``exits.exit1.branch[2].out_features``).
"""
from __future__ import annotations

import keyword
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import ScheduleError
from ..registry import EXIT_CRITERIA, UnknownNameError, suggest
from .branch import LayerSpec, parse_layer
from .criteria import get_criterion
from .deciders import DEFAULT_THRESHOLD, LEARNED_CRITERIA, parse_head
from .exit_set import RESERVED_NAMES

INSTANCE_KEYS = ("attach", "criterion", "patience", "final_loss_weight", "final_name", "stages", "exits", "gate",
                 "learned_policy", "distillation", "gradient_equilibrium", "forward_transfer")
DISTILLATION_KEYS = ("temperature", "weight", "teacher")
#: who teaches the exits: the final classifier of the same forward pass, or a frozen snapshot of the network
DISTILLATION_TEACHERS = ("final", "frozen")
GATE_KEYS = ("head", "loss_weight", "cost_weight")
LEARNED_POLICY_KEYS = ("head", "tradeoff")
#: the cost regulariser's weight when a gate block gives none
DEFAULT_COST_WEIGHT = 0.1
#: a learned policy's trade-off when the schedule gives none
DEFAULT_TRADEOFF = 0.1
EXIT_KEYS = ("attach", "branch", "loss_weight", "threshold", "criterion")
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


@dataclass
class ExitSpec:
    """One side exit: where it attaches, its branch layers, loss weight, threshold and criterion."""

    name: str
    attach: str
    branch: List[LayerSpec]
    loss_weight: LossWeight = LossWeight(DEFAULT_LOSS_WEIGHT, DEFAULT_LOSS_WEIGHT)
    threshold: Optional[float] = None
    criterion: Optional[str] = None

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

    head: List[LayerSpec]
    loss_weight: LossWeight = LossWeight(1.0, 1.0)
    cost_weight: LossWeight = LossWeight(DEFAULT_COST_WEIGHT, DEFAULT_COST_WEIGHT)

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form."""
        return {"head": [l.to_config() for l in self.head], "loss_weight": self.loss_weight.to_config(),
                "cost_weight": self.cost_weight.to_config()}


@dataclass
class LearnedPolicySpec:
    """``criterion: learned``: each exit's decider head and the accuracy-vs-MACs trade-off it is trained for."""

    head: List[LayerSpec]
    tradeoff: float = DEFAULT_TRADEOFF

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form."""
        return {"head": [l.to_config() for l in self.head], "tradeoff": self.tradeoff}


@dataclass
class DistillationSpec:
    """``distillation``: the final classifier's softened predictions (or those of a snapshot of the network
    frozen when the policy starts) teach every exit, a term weight * T^2 * KL per exit."""

    temperature: float = 4.0
    weight: LossWeight = LossWeight(0.5, 0.5)
    teacher: str = "final"

    def to_config(self) -> Dict[str, Any]:
        """Plain-python form."""
        return {"temperature": self.temperature, "weight": self.weight.to_config(), "teacher": self.teacher}


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
    #: IMTA's gradient equilibrium: the gradient reaching each stage is the mean of its classifiers' gradients
    gradient_equilibrium: bool = False
    #: IMTA's inline sub-network collaboration: each exit after the first also reads the previous exit's logits
    forward_transfer: bool = False

    @property
    def names(self) -> List[str]:
        """Exit names in depth order (the final classifier excluded)."""
        return [e.name for e in self.exits]

    def criteria(self) -> List[str]:
        """The criterion name of every exit (per-exit override, else the instance default)."""
        return [e.criterion or self.criterion for e in self.exits]

    @property
    def decider_head(self) -> Optional[List[LayerSpec]]:
        """The head of every exit's learned decider (None when exits decide by a fixed rule)."""
        block = self.gate if self.criterion == "gate" else self.learned_policy
        return block.head if block is not None else None

    def thresholds(self) -> List[Optional[float]]:
        """Every exit's threshold; patience exits default to ``patience``, learned decisions to 0.5."""
        out: List[Optional[float]] = []
        for e, crit in zip(self.exits, self.criteria()):
            default = self.patience if crit == "patience" else None
            if crit in LEARNED_CRITERIA:
                default = DEFAULT_THRESHOLD
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
        if self.gate is not None:
            out["gate"] = self.gate.to_config()
        if self.learned_policy is not None:
            out["learned_policy"] = self.learned_policy.to_config()
        if self.distillation is not None:
            out["distillation"] = self.distillation.to_config()
        if self.gradient_equilibrium:
            out["gradient_equilibrium"] = True
        if self.forward_transfer:
            out["forward_transfer"] = True
        return out


# --------------------------------------------------------------------------- parsing
def parse_early_exit_config(config: Mapping[str, Any]) -> EarlyExitSpec:
    """Validate an ``early_exits`` instance dict (``class`` already removed) into an EarlyExitSpec."""
    config = _mapping(config, "", "the early-exit instance")
    _check_keys(config, INSTANCE_KEYS + ("class",), "")
    if "attach" in config:
        raise ScheduleError("`attach: builtin` names the model's own classifiers: expand it against the model "
                            "(early_exit.builtin.expand_builtin) first", path="attach")
    criterion = _criterion_name(config.get("criterion", DEFAULT_CRITERION), "criterion")
    final_name = config.get("final_name", DEFAULT_FINAL_NAME)
    if not isinstance(final_name, str) or not final_name:
        raise ScheduleError(f"final_name must be a non-empty name, got {final_name!r}", path="final_name")
    if "exits" not in config:
        raise ScheduleError("an early-exit instance needs `exits` (name -> {attach, branch, ...}) or "
                            "`attach: builtin`", path="")
    exits_raw = _mapping(config["exits"], "exits", "`exits`")
    if not exits_raw:
        raise ScheduleError("`exits` is empty; give at least one exit", path="exits")
    exits = [_parse_exit(name, raw, final_name) for name, raw in exits_raw.items()]
    spec = EarlyExitSpec(exits=exits, criterion=criterion, final_name=final_name,
                         patience=_patience(config, criterion, exits),
                         final_loss_weight=_final_weight(config.get("final_loss_weight", 1.0)),
                         stages=_stages(config.get("stages")))
    _learned_blocks(spec, config)
    if "distillation" in config:
        spec.distillation = _distillation(config["distillation"])
    for key in ("gradient_equilibrium", "forward_transfer"):
        flag = config.get(key, False)
        if not isinstance(flag, bool):
            raise ScheduleError(f"must be true or false, got {flag!r}", path=key)
        setattr(spec, key, flag)
    _check_thresholds(spec)
    _check_auto_weight(spec)
    return spec


def _distillation(value: Any) -> DistillationSpec:
    """The ``distillation`` block (self-distillation of the exits)."""
    raw = _mapping(value, "distillation", "`distillation`")
    _check_keys(raw, DISTILLATION_KEYS, "distillation")
    temperature = _number(raw.get("temperature", 4.0), "distillation.temperature")
    if temperature <= 0:
        raise ScheduleError(f"the temperature must be above 0, got {temperature:g}", path="distillation.temperature")
    teacher = raw.get("teacher", "final")
    if teacher not in DISTILLATION_TEACHERS:
        raise ScheduleError(f"{teacher!r} is not a teacher", path="distillation.teacher",
                            valid=list(DISTILLATION_TEACHERS))
    return DistillationSpec(temperature, _loss_weight(raw.get("weight", 0.5), "distillation.weight"), teacher)


def _mapping(value: Any, path: str, what: str) -> Dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ScheduleError(f"{what} must be a mapping, got {type(value).__name__}", path=path)
    return dict(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(raw: Mapping[str, Any], valid: Sequence[str], path: str) -> None:
    for key in raw:
        if key not in valid:
            shown = [v for v in valid if v != "class"]
            raise ScheduleError(f"unknown key {key!r}", path=_join(path, str(key)), valid=shown,
                                suggestions=suggest(str(key), shown))


def _number(value: Any, path: str) -> float:
    """A float from a YAML scalar (PyYAML reads ``1e-3`` as a string, so numeric strings are accepted)."""
    number: Optional[float] = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ScheduleError(f"expected a number, got {value!r}", path=path)
    if not math.isfinite(number):
        raise ScheduleError(f"expected a finite number, got {value!r}", path=path)
    return number


def _criterion_name(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ScheduleError(f"an exit criterion is a name, got {value!r}", path=path, valid=EXIT_CRITERIA.names())
    try:
        return EXIT_CRITERIA.canonical(value)
    except UnknownNameError as err:
        raise ScheduleError(f"unknown exit criterion {value!r}", path=path, valid=EXIT_CRITERIA.names(),
                            suggestions=err.suggestions) from None


def _exit_name(name: Any, final_name: str) -> str:
    path = f"exits.{name}"
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"exit names must be non-empty strings, got {name!r}", path=path)
    if "." in name or not name.isidentifier() or keyword.iskeyword(name):
        raise ScheduleError(f"exit name {name!r} must be an identifier (letters, digits, _)", path=path)
    if name in RESERVED_NAMES:
        raise ScheduleError(f"exit name {name!r} is reserved (an attribute of the exits' module); choose another",
                            path=path)
    if name == final_name:
        raise ScheduleError(f"exit name {name!r} is the final classifier's name (final_name)", path=path)
    return name


def _parse_exit(name: Any, raw: Any, final_name: str) -> ExitSpec:
    name = _exit_name(name, final_name)
    path = f"exits.{name}"
    raw = _mapping(raw, path, f"exit {name!r}")
    _check_keys(raw, EXIT_KEYS, path)
    for key in ("attach", "branch"):
        if key not in raw:
            raise ScheduleError(f"exit {name!r} needs `{key}`", path=path)
    attach = raw["attach"]
    if not isinstance(attach, str) or not attach:
        raise ScheduleError(f"`attach` must be a module name, got {attach!r}", path=f"{path}.attach")
    branch = raw["branch"]
    if not isinstance(branch, list) or not branch:
        raise ScheduleError("`branch` must be a non-empty list of layers", path=f"{path}.branch")
    layers = [parse_layer(layer, f"{path}.branch[{i}]") for i, layer in enumerate(branch)]
    criterion = raw.get("criterion")
    if criterion is not None:
        criterion = _criterion_name(criterion, f"{path}.criterion")
    threshold = raw.get("threshold")
    if threshold is not None:
        threshold = _number(threshold, f"{path}.threshold")
    return ExitSpec(name=name, attach=attach, branch=layers,
                    loss_weight=_loss_weight(raw.get("loss_weight", DEFAULT_LOSS_WEIGHT), f"{path}.loss_weight"),
                    threshold=threshold, criterion=criterion)


def _loss_weight(value: Any, path: str) -> LossWeight:
    if isinstance(value, Mapping):
        _check_keys(value, RAMP_KEYS, path)
        missing = [k for k in RAMP_KEYS if k not in value]
        if missing:
            raise ScheduleError(f"a ramped loss weight needs `{missing[0]}` ({{start: 0.1, end: 1.0}})", path=path)
        start, end = (_number(value[k], f"{path}.{k}") for k in RAMP_KEYS)
    else:
        start = end = _number(value, path)
    for v in (start, end):
        if v < 0:
            raise ScheduleError(f"loss weights must be >= 0, got {v}", path=path)
    return LossWeight(start, end)


def _final_weight(value: Any) -> Union[float, str]:
    if value == AUTO:
        return AUTO
    if isinstance(value, str) and not _numeric(value):
        raise ScheduleError(f"final_loss_weight is a number or `auto`, got {value!r}", path="final_loss_weight",
                            suggestions=suggest(value, [AUTO]))
    weight = _number(value, "final_loss_weight")
    if weight < 0:
        raise ScheduleError(f"final_loss_weight must be >= 0, got {weight}", path="final_loss_weight")
    return weight


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _patience(config: Mapping[str, Any], criterion: str, exits: List[ExitSpec]) -> Optional[int]:
    uses = criterion == "patience" or any(e.criterion == "patience" for e in exits)
    if "patience" not in config:
        needed = [e.name for e in exits if (e.criterion or criterion) == "patience" and e.threshold is None]
        if needed:
            raise ScheduleError(f"the patience criterion needs `patience: k` (exit {needed[0]!r} has no threshold)",
                                path="")
        return None
    if not uses:
        raise ScheduleError("`patience` applies only to the patience criterion", path="patience",
                            valid=["patience"])
    value = config["patience"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScheduleError(f"patience must be an integer >= 1, got {value!r}", path="patience")
    return value


def _learned_blocks(spec: EarlyExitSpec, config: Mapping[str, Any]) -> None:
    """The ``gate`` / ``learned_policy`` block of a learned criterion, which applies to every exit."""
    for key, crit in (("gate", "gate"), ("learned_policy", "learned")):
        if key in config and spec.criterion != crit:
            raise ScheduleError(f"`{key}` applies to `criterion: {crit}`, but the instance's criterion is "
                                f"{spec.criterion}", path=key)
    for e in spec.exits:
        mixed = e.criterion is not None and (e.criterion in LEARNED_CRITERIA) != (spec.criterion in LEARNED_CRITERIA)
        if mixed or (e.criterion in LEARNED_CRITERIA and e.criterion != spec.criterion):
            raise ScheduleError(f"exit {e.name!r}: learned decisions (gate, learned) apply to every exit; set them "
                                f"as the instance's `criterion`, not per exit", path=f"exits.{e.name}.criterion")
    if spec.criterion == "gate":
        raw = _mapping(config.get("gate", {}), "gate", "`gate`")
        _check_keys(raw, GATE_KEYS, "gate")
        spec.gate = GateSpec(head=parse_head(raw.get("head"), "gate.head"),
                             loss_weight=_loss_weight(raw.get("loss_weight", 1.0), "gate.loss_weight"),
                             cost_weight=_loss_weight(raw.get("cost_weight", DEFAULT_COST_WEIGHT), "gate.cost_weight"))
    elif spec.criterion == "learned":
        raw = _mapping(config.get("learned_policy", {}), "learned_policy", "`learned_policy`")
        _check_keys(raw, LEARNED_POLICY_KEYS, "learned_policy")
        tradeoff = _number(raw.get("tradeoff", DEFAULT_TRADEOFF), "learned_policy.tradeoff")
        if tradeoff < 0:
            raise ScheduleError(f"the trade-off must be >= 0 (errors per sample that one backbone's worth of MACs "
                                f"is worth), got {tradeoff:g}", path="learned_policy.tradeoff")
        spec.learned_policy = LearnedPolicySpec(head=parse_head(raw.get("head"), "learned_policy.head"),
                                                tradeoff=tradeoff)


def _stages(value: Any) -> Optional[List[str]]:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ScheduleError("`stages` must be a non-empty list of top-level module names", path="stages")
    return list(value)


def _check_thresholds(spec: EarlyExitSpec) -> None:
    for e, crit, thr in zip(spec.exits, spec.criteria(), spec.thresholds()):
        if thr is None:
            continue
        problem = get_criterion(crit).check_threshold(thr)
        if problem:
            where = f"exits.{e.name}.threshold" if e.threshold is not None else "patience"
            raise ScheduleError(f"the {crit} threshold must be {problem}, got {thr!r}", path=where)


def _check_auto_weight(spec: EarlyExitSpec) -> None:
    if spec.final_loss_weight != AUTO:
        return
    for label, total in (("start", sum(e.loss_weight.start for e in spec.exits)),
                         ("end", sum(e.loss_weight.end for e in spec.exits))):
        if total > 1.0 + 1e-9:
            raise ScheduleError(f"final_loss_weight `auto` is 1 - sum of the exits' loss weights, but they sum to "
                                f"{total:g} (ramp {label}); lower them or give a number",
                                path="final_loss_weight")
