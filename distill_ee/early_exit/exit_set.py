"""ExitSet: the module type that holds a model's exit branches and declares where each one reads.

Attached as ``model.early_exits`` (``EXITS_ATTR``), an ExitSet is an ``nn.ModuleDict`` of exit name ->
branch in depth order, so the backbone's parameter names do not change and branch weights travel with
``model.state_dict()``. Everything else needed to exit through the branches is declared on it, not found
elsewhere: the attach module of each exit, the class count and input shape the branches were built for, the
final classifier's name, the explicit stage list (for models torch.fx cannot trace), and each exit's
criterion and threshold. Criteria and thresholds are the module's extra state: ``model.state_dict()`` saves
them and ``load_state_dict`` restores them, so calibrated thresholds survive any checkpoint of the model.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..errors import CheckpointError, DistillEEError
from ..registry import EXIT_CRITERIA
from .criteria import ExitCriterion, get_criterion
from .deciders import LearnedCriterion

#: the attribute of the user's model that holds its ExitSet
EXITS_ATTR = "early_exits"
#: the ExitSet's submodule holding the learned deciders by exit name (not an exit)
DECIDERS = "deciders"

ThresholdArg = Union[Sequence[Optional[float]], Mapping[str, Optional[float]]]


class ExitSet(nn.ModuleDict):
    """Exit branches by name (depth order) with their attach points, criteria and thresholds.

    Exits decided by a learned decider (``gate``, ``learned``) keep it in the submodule ``deciders`` (exit name
    -> Decider), saved with the model like the branches; iterating the ExitSet gives the branches only.
    """

    def __init__(self, branches: Mapping[str, nn.Module], attach: Sequence[str], *, num_classes: int,
                 input_shape: Sequence[int], criteria: Sequence[str], thresholds: Sequence[Optional[float]],
                 final_name: str = "final", stages: Optional[Sequence[str]] = None,
                 copy_input: Optional[Sequence[bool]] = None, instance_name: str = "",
                 deciders: Optional[Mapping[str, nn.Module]] = None):
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
        self.input_shape: Tuple[int, ...] = tuple(int(s) for s in input_shape)
        self.final_name = final_name
        self.stages = list(stages) if stages is not None else None
        #: per exit: whether the training hook must copy the attach output (the backbone changes it in place)
        self.copy_input = list(copy_input) if copy_input is not None else [False] * len(names)
        self.instance_name = instance_name
        self.criteria: List[str] = list(criteria)
        self.thresholds: List[Optional[float]] = [None] * len(names)
        self.set_thresholds(list(thresholds))

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
        if isinstance(thresholds, Mapping):
            unknown = [n for n in thresholds if n not in names]
            if unknown:
                raise DistillEEError(f"no exit named {unknown[0]!r} (exits: {', '.join(names)})")
            new = [thresholds.get(n, t) for n, t in zip(names, self.thresholds)]
        else:
            new = list(thresholds)
            if len(new) != len(names):
                raise DistillEEError(f"need {len(names)} thresholds, got {len(new)}")
        for name, crit, value in zip(names, self.criteria, new):
            problem = None if value is None else get_criterion(crit).check_threshold(value)
            if problem:
                raise DistillEEError(f"exit {name!r}: the {crit} threshold must be {problem}, got {value!r}")
        self.thresholds = [None if t is None else float(t) for t in new]

    def set_criteria(self, criteria: Sequence[str]) -> None:
        """Replace every exit's criterion (registered names)."""
        criteria = list(criteria)
        unknown = [c for c in criteria if c not in EXIT_CRITERIA]
        if unknown or len(criteria) != len(self.names):
            raise DistillEEError(f"need {len(self.names)} registered exit criteria, got {criteria}")
        canonical = [EXIT_CRITERIA.canonical(c) for c in criteria]
        deciders = self.learned_deciders
        for name, crit in zip(self.names, canonical):
            if isinstance(get_criterion(crit), LearnedCriterion) and name not in deciders:
                raise DistillEEError(f"exit {name!r} has no learned decider for the {crit} criterion (attach the "
                                     f"exits with `criterion: {crit}`)")
        self.criteria = canonical

    def criterion_objects(self) -> List[ExitCriterion]:
        """Each exit's criterion, learned ones bound to the exit's decider."""
        deciders = self.learned_deciders
        out: List[ExitCriterion] = []
        for name, crit in zip(self.names, self.criteria):
            criterion = get_criterion(crit)
            out.append(criterion.bind(deciders[name]) if isinstance(criterion, LearnedCriterion) else criterion)
        return out

    # ----------------------------------------------------------------- saved with model.state_dict()
    def get_extra_state(self) -> Dict[str, Any]:
        """Criteria and thresholds (plain values: they load with ``torch.load(weights_only=True)``)."""
        return {"criteria": list(self.criteria), "thresholds": list(self.thresholds)}

    def set_extra_state(self, state: Any) -> None:
        """Restore what ``get_extra_state`` returned."""
        if not isinstance(state, Mapping) or not {"criteria", "thresholds"} <= set(state):
            raise CheckpointError("the saved exits lack their criteria and thresholds")
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
    "criteria", "thresholds"}


def exits_of(model: nn.Module) -> Optional[ExitSet]:
    """The ExitSet attached to ``model`` (None when it has none)."""
    found = getattr(model, EXITS_ATTR, None)
    return found if isinstance(found, ExitSet) else None


def exit_sets(model: nn.Module) -> List[Tuple[str, ExitSet]]:
    """Every ExitSet inside ``model`` with its module name (wrappers and nested models included)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, ExitSet)]
