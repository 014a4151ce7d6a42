"""MultiExitModel: a backbone cut into stages with an exit branch after each, for real early-exit inference.

``forward(x)`` really skips work: after each exit the samples that leave are written to the output and only
the others go on — every value the later stages still need is shrunk once with ``index_select`` and the next
stage runs on the smaller batch; it stops as soon as no sample is left. Batch size 1 takes a fast path with
no indexing at all. ``simulate(x)`` runs every stage and branch on every sample (for calibration and
statistics); ``decide(simulate(x))`` gives the same predictions and exits as ``forward(x)``.

Decisions never see labels. The stages and branches share modules and parameters with the model they were
cut from; in eval mode both paths run under ``torch.inference_mode``. A multi-exit model cut from a model
(``from_model``) reads its criteria and thresholds from the model's ExitSet, their one owner: setting them on
either is seen by both. One built from loose modules (a TorchScript export) holds its own.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..dynamic import begin_rows, owners, select_rows
from ..inputs import InputLike, input_spec
from ..errors import DistillEEError
from ..slots import shrink
from ..exit_settings import ExitOutputs, ThresholdArg, resolve_thresholds
from .collaboration import run_branch, takes_previous
from .exit_set import ExitSet
from .criteria import CriterionArg, State, criteria_list
from .decisions import decide_exits
from .staging import StagePlan, split_model



class MultiExitModel(ExitOutputs, nn.Module):
    """Stages + exit branches + per-exit criteria and thresholds; ``forward`` returns (logits, exit index)."""

    def __init__(self, stages: Sequence[nn.Module], branches: Sequence[nn.Module], plan: StagePlan, *,
                 exit_names: Sequence[str], final_name: str = "final", criteria: CriterionArg = "entropy",
                 thresholds: ThresholdArg = None, input_shape: InputLike = (), num_classes: int = 0):
        super().__init__()
        if len(stages) != len(branches) + 1 or plan.num_exits != len(branches) or len(exit_names) != len(branches):
            raise DistillEEError(f"a multi-exit model needs one stage per exit plus one, got {len(stages)} stages, "
                                 f"{len(branches)} branches and {len(exit_names)} exit names")
        self.stages = nn.ModuleList(stages)
        self.branches = nn.ModuleList(branches)
        self.plan = plan
        self.exit_names = list(exit_names)
        self.final_name = final_name
        #: one sample of the input (shape, dtype, value range): what dummy inputs of this model are made of
        self.input_spec = input_spec(input_shape)
        self.input_shape = self.input_spec.shape
        self.num_classes = int(num_classes)
        self.criteria = criteria_list(criteria, len(branches))
        #: the learned deciders the criteria use (registered: they follow the model's device and mode)
        self.deciders = nn.ModuleList([c.decider for c in self.criteria if c.learned and c.decider is not None])
        self._thresholds: List[Optional[float]] = [None] * len(branches)
        self.__dict__["_owner"] = None  # the ExitSet whose criteria and thresholds these are (not a submodule)
        self.set_thresholds(thresholds if thresholds is not None else self._thresholds)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, model: nn.Module, exits: ExitSet, criterion: Optional[CriterionArg] = None,
                   thresholds: ThresholdArg = None, stages: Optional[Sequence[str]] = None) -> "MultiExitModel":
        """Cut ``model`` at the attach points of ``exits`` (torch.fx, or the explicit stage list).

        Criteria, thresholds and the stage list default to what the ExitSet declares.
        Without ``criterion`` and ``thresholds`` the ExitSet stays their owner; with either, this model holds its
        own copies (a candidate setting to time without changing the exits).
        """
        modules, plan = split_model(model, exits.attach, exits.input_spec,
                                    stages if stages is not None else exits.stages)
        multi = cls(modules, exits.branch_list(), plan, exit_names=exits.names, final_name=exits.final_name,
                    criteria=criterion if criterion is not None else exits.criterion_objects(),
                    thresholds=thresholds if thresholds is not None else list(exits.thresholds),
                    input_shape=exits.input_spec, num_classes=exits.num_classes)
        multi.__dict__["_source"] = weakref.ref(model)  # not a submodule: the model it was cut from
        if criterion is None and thresholds is None:
            multi.__dict__["_owner"] = exits
            multi.__dict__["_seen"] = exits.version
        return multi

    def begin(self, x: torch.Tensor) -> None:
        """Start a forward pass on ``x`` for the routing (per-sample state) of the stages' blocks, if any."""
        holders = self.__dict__.get("_dynamic")
        if holders is None:
            holders = self.__dict__["_dynamic"] = owners(self.stages)
        if holders:
            begin_rows(holders, x)

    # ----------------------------------------------------------------- settings
    @property
    def thresholds(self) -> List[Optional[float]]:
        """Per-exit thresholds (None: the exit is never taken and, if stateless, its branch is skipped)."""
        self._follow_owner()
        return list(self._thresholds)

    def _follow_owner(self) -> None:
        """Take the owner's criteria and thresholds again when they changed since they were last read."""
        owner = self.__dict__["_owner"]
        if owner is not None and owner.version != self.__dict__["_seen"]:
            self.__dict__["_seen"] = owner.version
            self.criteria = owner.criterion_objects()
            self._derive(list(owner.thresholds))

    def set_thresholds(self, thresholds: ThresholdArg) -> None:
        """Replace thresholds: a list in exit order, or a mapping exit name -> threshold (others kept); on the
        owning ExitSet when there is one."""
        if thresholds is None:
            return
        owner = self.__dict__.get("_owner")
        if owner is not None:
            owner.set_thresholds(thresholds)
            self._follow_owner()
            return
        self._derive(resolve_thresholds(self.exit_names, self._thresholds, thresholds))

    def _derive(self, new: Sequence[Optional[float]]) -> None:
        """Thresholds, and which exits real early exit computes, from ``new``."""
        self._thresholds = [None if t is None else float(t) for t in new]
        # a stateless exit without threshold is skipped entirely; a stateful one still updates its state, and
        # one whose logits a later branch reads (forward transfer) is computed
        feeds = [any(takes_previous(b) for b in self.branches[k + 1:]) for k in range(self.num_exits)]
        self._active = [t is not None or c.stateful or f for t, c, f in zip(self._thresholds, self.criteria, feeds)]
        self._limits = [float("inf") if t is None else t for t in self._thresholds]

    # ----------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "MultiExitModel":
        """Set the mode this model runs in, without touching the modules it shares with the model it was cut
        from: those are put in this mode for each call and given their own mode back afterwards, so
        ``multi.eval()`` during a training loop leaves the training model's batch norms and dropouts alone."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        return self

    def _run_in_mode(self, fn: Any, x: torch.Tensor) -> Any:
        mode = self.training
        source = self.__dict__.get("_source")
        root = source() if source is not None else None
        # the usual case costs one comparison: the model it was cut from is in this mode, and so its modules
        changed = [] if root is not None and root.training == mode else self._switch_shared(mode)
        try:
            if mode:
                return fn(x)
            with torch.inference_mode():
                return fn(x)
        finally:
            for m in changed:
                m.training = not mode

    def _switch_shared(self, mode: bool) -> List[nn.Module]:
        """Put every module of the stages and branches in ``mode``; the ones that were not."""
        shared = self.__dict__.get("_shared")
        if shared is None:
            routing = [m for h in owners(self.stages) for m in h.modules()]
            shared = self.__dict__["_shared"] = [m for m in self.modules() if m is not self] + routing
        changed = [m for m in shared if m.training != mode]
        for m in changed:
            m.training = mode
        return changed

    # ----------------------------------------------------------------- simulated inference
    def simulate(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Logits of every exit for every sample, the final classifier's last."""
        return self._run_in_mode(self._simulate, x)

    def _simulate(self, x: torch.Tensor) -> List[torch.Tensor]:
        plan = self.plan
        env: List[Any] = [None] * plan.num_slots
        env[0] = x
        self.begin(x)
        logits: List[torch.Tensor] = []
        for k, stage in enumerate(self.stages):
            outs = stage(*[env[i] for i in plan.inputs[k]])
            for slot, value in zip(plan.outputs[k], outs):
                env[slot] = value
            if k < plan.num_exits:
                logits.append(run_branch(self.branches[k], env[plan.attach[k]], logits[-1] if logits else None))
        logits.append(env[plan.result])
        return logits

    @property
    def computed_exits(self) -> List[bool]:
        """Per exit: whether real early exit computes its branch (a threshold, a state, or a later reader)."""
        self._follow_owner()
        return list(self._active)

    def decide(self, exit_logits: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(chosen logits, exit index) per sample from ``simulate``'s output, by this model's criteria."""
        self._follow_owner()
        return decide_exits(exit_logits, self.criteria, self._thresholds)

    # ----------------------------------------------------------------- real early exit
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Real early exit: (logits from the exit each sample took, that exit's index; final = num_exits)."""
        return self._run_in_mode(self._real, x)

    def _real(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self._follow_owner()
        if x.shape[0] == 1:
            return self._real_single(x)
        plan, stages, branches = self.plan, self._stage_calls(), self.branches
        env: List[Any] = [None] * plan.num_slots
        env[0] = x
        self.begin(x)
        holders = self.__dict__["_dynamic"]
        results = _Results(x.shape[0], plan.num_exits)
        state: State = {}
        previous: Optional[torch.Tensor] = None
        for k in range(plan.num_exits):
            for slot, value in zip(plan.outputs[k], stages[k](*[env[i] for i in plan.inputs[k]])):
                env[slot] = value
            if self._active[k]:
                logits = run_branch(branches[k], env[plan.attach[k]], previous)
                previous = logits
                mask = self.criteria[k].exit_mask(logits, self._limits[k], state)
                leaving = mask.nonzero().squeeze(1)
                if leaving.shape[0] == results.live:
                    return results.finish(logits, k)
                if leaving.shape[0]:
                    keep = (~mask).nonzero().squeeze(1)
                    results.leave(logits, leaving, keep, k)
                    shrink(env, plan.carry[k], keep, _select_rows)
                    previous = logits.index_select(0, keep)
                    if holders:
                        select_rows(holders, keep)
                    for key in state:
                        state[key] = state[key].index_select(0, keep)
            for slot in plan.free[k]:
                env[slot] = None
        last = plan.num_exits
        return results.finish(stages[last](*[env[i] for i in plan.inputs[last]])[0], last)

    def _real_single(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One sample: plain early return at the first exit that fires, no indexing."""
        plan, stages, branches = self.plan, self._stage_calls(), self.branches
        env: List[Any] = [None] * plan.num_slots
        env[0] = x
        self.begin(x)
        state: State = {}
        previous: Optional[torch.Tensor] = None
        for k in range(plan.num_exits):
            outs = stages[k](*[env[i] for i in plan.inputs[k]])
            for slot, value in zip(plan.outputs[k], outs):
                env[slot] = value
            if self._active[k]:
                logits = previous = run_branch(branches[k], env[plan.attach[k]], previous)
                if bool(self.criteria[k].exit_mask(logits, self._limits[k], state)):
                    return logits, self._exit_index(k, logits.device)
        last = plan.num_exits
        final = stages[last](*[env[i] for i in plan.inputs[last]])[0]
        return final, self._exit_index(last, final.device)

    def _exit_index(self, k: int, device: torch.device) -> torch.Tensor:
        """A fresh one-element exit-index tensor (cloned from a cached one: cheaper than torch.full)."""
        cache = self.__dict__.setdefault("_index_cache", {})
        key = (k, device)
        if key not in cache:
            cache[key] = torch.full((1,), k, dtype=torch.long, device=device)
        return cache[key].clone()

    def _stage_calls(self) -> List[Any]:
        """The stages' ``forward`` methods: calling them directly skips the per-call wrapper of GraphModule
        and nn.Module (the layers inside still run their own hooks)."""
        return [stage.forward for stage in self.stages]

    # ----------------------------------------------------------------- description
    def describe(self) -> Dict[str, Any]:
        """Plain-python description (names, criteria and their leave rules, thresholds, plan) used by the
        exporters."""
        thresholds = self.thresholds
        return {"exit_names": list(self.exit_names), "final_name": self.final_name,
                "criteria": [c.name for c in self.criteria], "leave": [c.leave for c in self.criteria],
                "thresholds": thresholds,
                **self.input_spec.record(), "num_classes": self.num_classes,
                "plan": self.plan.to_dict()}

    def extra_repr(self) -> str:
        """Exit names, criteria and thresholds."""
        return (f"exits={self.exit_names}, criteria={[c.name for c in self.criteria]}, "
                f"thresholds={self.thresholds}")


class _Results:
    """Per-sample logits and exit indices of one batch, filled as samples leave; tracks the live rows."""

    def __init__(self, n: int, num_exits: int):
        self.n = n
        self.live = n
        self.num_exits = num_exits
        self.logits: Optional[torch.Tensor] = None
        self.exit_index: Optional[torch.Tensor] = None
        self.alive: Optional[torch.Tensor] = None  # original rows of the live samples; None while all live

    def leave(self, logits: torch.Tensor, leaving: torch.Tensor, keep: torch.Tensor, k: int) -> None:
        """Samples ``leaving`` (rows among the live ones) take exit ``k``; ``keep`` go on."""
        if self.logits is None:
            self.logits = logits.new_empty((self.n, logits.shape[1]))
            self.exit_index = torch.full((self.n,), self.num_exits, dtype=torch.long, device=logits.device)
        dest = leaving if self.alive is None else self.alive.index_select(0, leaving)
        self.logits.index_copy_(0, dest, logits.index_select(0, leaving))
        self.exit_index.index_fill_(0, dest, k)  # type: ignore[union-attr]
        self.alive = keep if self.alive is None else self.alive.index_select(0, keep)
        self.live = keep.shape[0]

    def finish(self, logits: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """All live samples take exit ``k``; the batch's (logits, exit index)."""
        if self.logits is None:  # nobody left earlier: the exit's own tensors are the result
            return logits, torch.full((self.n,), k, dtype=torch.long, device=logits.device)
        self.logits.index_copy_(0, self.alive, logits)  # type: ignore[arg-type]
        self.exit_index.index_fill_(0, self.alive, k)  # type: ignore[union-attr,arg-type]
        return self.logits, self.exit_index  # type: ignore[return-value]


def _select_rows(value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``value.index_select(0, keep)`` that keeps a channels_last layout (plain index_select returns NCHW,
    which would make every later convolution convert its input back)."""
    if value.dim() == 4 and not value.is_contiguous() and value.is_contiguous(memory_format=torch.channels_last):
        return value.permute(0, 2, 3, 1).index_select(0, keep).permute(0, 3, 1, 2)
    return value.index_select(0, keep)
