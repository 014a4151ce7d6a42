"""ExitSet: the attachment that holds a model's exit branches and declares where each one reads.

Attached as ``model.early_exits`` (``EXITS_ATTR``; see ``distill_ee.attachment``), an ExitSet is an
``nn.ModuleDict`` of exit name -> branch in depth order, so the backbone's parameter names do not change and
branch weights travel with ``model.state_dict()``. Everything else needed to exit through the branches is
declared on it, not found elsewhere: the attach module of each exit, the class count and input shape the
branches were built for, the final classifier's name, the explicit stage list (for models torch.fx cannot
trace), the configuration it was attached with, and each exit's criterion and threshold.

The ExitSet is the one owner of the exits' criteria and thresholds: every other place (the multi-exit model,
the YAML view ``EarlyExits.config``, exports) reads them from here, and ``version`` counts their changes.
Criteria and thresholds are the module's extra state: ``model.state_dict()`` saves them and
``load_state_dict`` restores them, so calibrated thresholds survive any checkpoint of the model. The exits
install nothing on the model: the training hooks (``hooks.ExitHooks``) exist only while a policy trains them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..arguments import ArgumentError, Checked, Range
from ..attachment import Attachment, attachment_of, register_attachment
from ..errors import CheckpointError, DistillEEError, ThresholdError
from ..modules import first_line
from ..inputs import InputLike, InputSpec, InputSpecError, dtype_name, input_spec, spec_from_record
from ..structure import sample_shape_problem
from ..registry import EXIT_CRITERIA
from ..exit_settings import ThresholdArg, resolve_thresholds
from .criteria import ExitCriterion, get_criterion

#: the attribute of the user's model that holds its ExitSet
EXITS_ATTR = "early_exits"
#: the ExitSet's submodule holding the learned deciders by exit name (not an exit)
DECIDERS = "deciders"



def _sample_shape(value: Any) -> List[int]:
    problem = sample_shape_problem(value)
    if problem:
        raise ArgumentError(problem)
    return list(value)


#: one sample's shape in a structure step
SampleShape = Annotated[List[int], Checked("one sample's shape", _sample_shape)]


def _input_dtype(value: Any) -> str:
    try:
        if not isinstance(value, str) or dtype_name(value) is None:
            raise InputSpecError(f"must name an integer dtype (float inputs record none), got {value!r}")
    except InputSpecError as err:
        raise ArgumentError(str(err)) from None
    return value


#: an integer input's dtype in a structure step (absent: a float input)
InputDtype = Annotated[str, Checked("an integer dtype name", _input_dtype)]


@dataclass
class ExitsStepFields:
    """What an ``early_exits`` structure step holds besides its kind and name."""

    owner: ClassVar[str] = "an early_exits step"
    config: Dict[str, Any]
    num_classes: Annotated[int, Range(1, 1_000_000, integer=True)]
    input_shape: SampleShape
    input_dtype: Optional[InputDtype] = None
    input_range: Optional[List[int]] = None


@register_attachment
class ExitSet(Attachment, nn.ModuleDict):
    """Exit branches by name (depth order) with their attach points, criteria and thresholds.

    Exits decided by a learned decider (``gate``, ``learned``) keep it in the submodule ``deciders`` (exit name
    -> Decider), saved with the model like the branches; iterating the ExitSet gives the branches only.
    """

    kind = EXITS_ATTR
    attribute = EXITS_ATTR
    noun = "early exits"
    summary_key = "exits"
    trained_by_policies = True
    step_schema = ExitsStepFields

    def __init__(self, branches: Mapping[str, nn.Module], attach: Sequence[str], *, num_classes: int,
                 input_shape: InputLike, criteria: Sequence[str], thresholds: Sequence[Optional[float]],
                 final_name: str = "final", stages: Optional[Sequence[str]] = None,
                 copy_input: Optional[Sequence[bool]] = None, instance_name: str = "",
                 deciders: Optional[Mapping[str, nn.Module]] = None, config: Optional[Mapping[str, Any]] = None):
        super().__init__(dict(branches))
        if deciders:
            self.add_module(DECIDERS, nn.ModuleDict(dict(deciders)))
        names = list(branches)
        if not (len(attach) == len(criteria) == len(thresholds) == len(names)):
            raise DistillEEError(f"an ExitSet needs one attach point, criterion and threshold per branch "
                                 f"({len(names)}), got {len(attach)}, {len(criteria)} and {len(thresholds)}")
        #: exit name -> name of the module whose output the branch reads
        self.attach_points: Dict[str, str] = dict(zip(names, attach))
        self.num_classes = int(num_classes)
        #: one sample of the input (shape, dtype, value range) every dummy input of these exits is made from
        self.input_spec: InputSpec = input_spec(input_shape)
        self.input_shape: Tuple[int, ...] = self.input_spec.shape
        self.final_name = final_name
        self.stages = list(stages) if stages is not None else None
        #: per exit: whether the training hook must copy the attach output (the backbone changes it in place)
        self.copy_input = list(copy_input) if copy_input is not None else [False] * len(names)
        self.instance_name = instance_name
        #: the validated configuration the exits were attached with (the structure step's)
        self.attached_config: Dict[str, Any] = dict(config or {})
        #: how many times the criteria or thresholds changed (readers recompute what they derived from them)
        self.version = 0
        self.criteria: List[str] = list(criteria)
        self.thresholds: List[Optional[float]] = [None] * len(names)
        self.set_thresholds(list(thresholds))

    # ----------------------------------------------------------------- the attachment protocol
    def step_config(self) -> Dict[str, Any]:
        """The configuration, class count and input shape the branches are rebuilt from."""
        return {"config": dict(self.attached_config), "num_classes": int(self.num_classes),
                **self.input_spec.record()}

    @classmethod
    def from_step(cls, model: nn.Module, step: Mapping[str, Any]) -> "ExitSet":
        """The exits of a saved step, built for ``model`` (fresh branch weights)."""
        from .attach import build_exits  # attach.py builds ExitSets, so it imports this module

        return build_exits(model, step["config"], num_classes=int(step["num_classes"]),
                           input_shape=_step_input(step), name=str(step.get("name", "")))

    def export_problem(self) -> Optional[str]:
        """Exits that read the previous exit's logits (forward transfer) are not exported."""
        if self.attached_config.get("forward_transfer"):
            return ("exits with forward_transfer (each reads the previous exit's logits, which the exported runtime "
                    "does not pass)")
        return None

    def user_view(self, model: nn.Module) -> Any:
        """``EarlyExits`` of ``model``."""
        from .exits import EarlyExits  # the view is built on the ExitSet

        return EarlyExits(model)

    # ----------------------------------------------------------------- the branches, without the deciders
    def keys(self) -> List[str]:  # type: ignore[override]
        """Exit names (the deciders' submodule is not an exit)."""
        return [k for k in self._modules if k != DECIDERS]

    def items(self) -> List[Tuple[str, nn.Module]]:  # type: ignore[override]
        """(exit name, branch) pairs in depth order."""
        return [(k, self._modules[k]) for k in self.keys()]  # type: ignore[misc]

    def values(self) -> List[nn.Module]:  # type: ignore[override]
        """The branches in depth order."""
        return [self._modules[k] for k in self.keys()]  # type: ignore[misc]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    # ----------------------------------------------------------------- what it declares
    @property
    def names(self) -> List[str]:
        """Exit names in depth order (the final classifier excluded)."""
        return self.keys()

    @property
    def learned_deciders(self) -> Dict[str, nn.Module]:
        """The learned deciders by exit name (empty when no exit has one)."""
        found = self._modules.get(DECIDERS)
        return dict(found.items()) if found is not None else {}

    @property
    def attach(self) -> List[str]:
        """Attach module names in exit order."""
        return [self.attach_points[n] for n in self.names]

    @property
    def branches(self) -> "ExitSet":
        """The branches by name (the ExitSet itself)."""
        return self

    @property
    def output_names(self) -> List[str]:
        """Exit names followed by the final classifier's name."""
        return [*self.names, self.final_name]

    def branch_list(self) -> List[nn.Module]:
        """The branch modules in exit order."""
        return [self[n] for n in self.names]

    # ----------------------------------------------------------------- decisions
    def set_thresholds(self, thresholds: ThresholdArg) -> None:
        """Replace thresholds: a list in exit order or a mapping exit name -> threshold (others kept)."""
        names = self.names
        new = resolve_thresholds(names, self.thresholds, thresholds)
        for name, crit, value in zip(names, self.criteria, new):
            problem = None if value is None else get_criterion(crit).check_threshold(value)
            if problem:
                raise ThresholdError(f"exit {name!r}: the {crit} threshold must be {problem}, got {value!r}")
        self.thresholds = [None if t is None else float(t) for t in new]
        self.version += 1

    def set_criteria(self, criteria: Sequence[str]) -> None:
        """Replace every exit's criterion (registered names)."""
        criteria = list(criteria)
        unknown = [c for c in criteria if c not in EXIT_CRITERIA]
        if unknown or len(criteria) != len(self.names):
            raise DistillEEError(f"need {len(self.names)} registered exit criteria, got {criteria}")
        canonical = [EXIT_CRITERIA.canonical(c) for c in criteria]
        deciders = self.learned_deciders
        for name, crit in zip(self.names, canonical):
            if get_criterion(crit).learned and name not in deciders:
                raise DistillEEError(f"exit {name!r} has no learned decider for the {crit} criterion (attach the "
                                     f"exits with `criterion: {crit}`)")
        self.criteria = canonical
        self.version += 1

    def criterion_objects(self) -> List[ExitCriterion]:
        """Each exit's criterion, learned ones bound to the exit's decider."""
        deciders = self.learned_deciders
        out: List[ExitCriterion] = []
        for name, crit in zip(self.names, self.criteria):
            criterion = get_criterion(crit)
            out.append(criterion.bind(deciders[name]) if criterion.learned else criterion)
        return out

    @property
    def trained_with_network(self) -> bool:
        """True when a criterion's deciders learn in the joint loss (gates), not after the network."""
        return any(get_criterion(c).trained_with_network for c in self.criteria)

    @property
    def learned_decisions(self) -> List[str]:
        """The criteria (names) of the exits decided by learned deciders."""
        return [c for c in self.criteria if get_criterion(c).learned]

    @property
    def learned_policy(self) -> bool:
        """True when every exit is decided by a decider trained after the network (a learned exit policy)."""
        return all(get_criterion(c).learned and not get_criterion(c).trained_with_network for c in self.criteria)

    # ----------------------------------------------------------------- saved with model.state_dict()
    def get_extra_state(self) -> Dict[str, Any]:
        """Criteria and thresholds (plain values: they load with ``torch.load(weights_only=True)``)."""
        return {"criteria": list(self.criteria), "thresholds": list(self.thresholds)}

    def set_extra_state(self, state: Any) -> None:
        """Restore what ``get_extra_state`` returned (checked: names and numbers, one per exit)."""
        if not isinstance(state, Mapping) or not {"criteria", "thresholds"} <= set(state):
            raise CheckpointError("the saved exits lack their criteria and thresholds")
        criteria, thresholds = state["criteria"], state["thresholds"]
        if not isinstance(criteria, (list, tuple)) or not all(isinstance(c, str) for c in criteria):
            raise CheckpointError(f"the saved exits' criteria must be a list of names, got {criteria!r}"[:300])
        if not isinstance(thresholds, (list, tuple)) or not all(
                t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)) for t in thresholds):
            raise CheckpointError(f"the saved exits' thresholds must be a list of numbers, got {thresholds!r}"[:300])
        try:
            self.set_criteria(state["criteria"])
            self.set_thresholds(state["thresholds"])
        except DistillEEError as err:
            raise CheckpointError(f"the saved exits do not fit: {err}") from None

    def extra_repr(self) -> str:
        """``exit1@conv1, exit2@layer2``: each exit and where it reads."""
        return ", ".join(f"{n}@{a}" for n, a in self.attach_points.items())


#: attribute names of an ExitSet that exit names may not take
RESERVED_NAMES = frozenset(dir(ExitSet)) | {
    DECIDERS, "attach_points", "num_classes", "input_shape", "final_name", "stages", "copy_input", "instance_name",
    "criteria", "thresholds", "attached_config", "version"}


def exits_of(model: nn.Module) -> Optional[ExitSet]:
    """The ExitSet attached to ``model`` (None when it has none)."""
    return attachment_of(model, ExitSet)


def exit_sets(model: nn.Module) -> List[Tuple[str, ExitSet]]:
    """Every ExitSet inside ``model`` with its module name (wrappers and nested models included)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, ExitSet)]


def _step_input(step: Mapping[str, Any]) -> InputSpec:
    """The input a saved step records; CheckpointError when its dtype or range cannot describe one."""
    try:
        return spec_from_record(step)
    except (InputSpecError, TypeError, ValueError) as err:  # InputSpecError is a ValueError; int() of a bad range
        raise CheckpointError(f"its input: {first_line(err)}") from None
