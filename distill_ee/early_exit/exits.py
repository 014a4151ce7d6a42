"""EarlyExits: the exits attached to a model, as a schedule component and as the object inference uses.

In a schedule, an ``early_exits`` instance (``class: EarlyExit``) builds itself: it parses its config,
attaches the branches to the model (``attach.attach_exits``, which records the structure step), and adds the
branch parameters to the optimizer as a parameter group. Its policy entry (``policies.early_exit``) trains
them. After training, or after a checkpoint was loaded, ``EarlyExits.of(model)`` gives the same view::

    exits = EarlyExits.of(model)
    multi = exits.multi_exit_model().eval()   # stages + branches + criteria + thresholds
    logits, exit_index = multi(x)             # real early exit
    rows = exits.evaluate(test_loader)        # per-exit statistics

All state lives in the model's ``ExitSet`` (branches, attach points, criteria, thresholds), so any number of
EarlyExits objects of one model agree, and re-attached exits are seen at once.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..context import BuildContext
from ..dynamic import DynamicComputation
from ..errors import CheckpointError, DistillEEError, ScheduleError
from ..modules import eval_mode, is_wrapper, unwrap
from ..pruning.masks import notify_parameters_replaced
from ..registry import EARLY_EXITS
from ..structure import STEP_KINDS, ReplayContext, Step, StepKind, structure_steps, swap_into_optimizer
from .attach import EXITS_STEP, attach_exits, detach_exits, forward_positions
from .builtin import expand_builtin
from .cost import exit_macs
from .exit_set import EXITS_ATTR, ExitSet, ThresholdArg, exits_of
from .multi_exit import MultiExitModel
from .spec import EarlyExitSpec, parse_early_exit_config
from .gates import soft_ensemble
from .stats import collect_exit_logits, exit_statistics


@EARLY_EXITS.register("EarlyExit")
class EarlyExits:
    """The exits of one model: names, criteria, thresholds, the multi-exit model and its statistics."""

    def __init__(self, model: nn.Module):
        if exits_of(unwrap(model)) is None:
            raise DistillEEError(f"{type(unwrap(model)).__name__} has no early exits attached")
        self.model = model

    # ----------------------------------------------------------------- construction
    @classmethod
    def build(cls, ctx: BuildContext, **config: Any) -> "EarlyExits":
        """Build from a schedule instance: attach the exits, check that the model can be cut into stages at
        them (now, not after training), and give the branch parameters to the optimizer."""
        exits = cls.from_config(config, ctx.model, num_classes=ctx.num_classes, input_shape=ctx.input_shape,
                                name=ctx.name)
        try:
            exits.multi_exit_model()
        except ScheduleError:
            raise
        except DistillEEError as err:
            raise ScheduleError(str(err), path="stages" if "stages" in config else "") from None
        ctx.add_parameters(exits.branch_parameters())
        return exits

    @classmethod
    def from_config(cls, config: Mapping[str, Any], model: nn.Module, *, num_classes: int,
                    input_shape: Sequence[int], name: str = "") -> "EarlyExits":
        """Validate ``config`` (a schedule instance without ``class``) and attach its exits to ``model``."""
        if is_wrapper(model) and not isinstance(model, nn.DataParallel):
            raise DistillEEError("attach early exits before wrapping the model in DistributedDataParallel "
                                 "(it fixes the parameters it synchronises when it is built)")
        if exits_of(unwrap(model)) is not None:
            raise ScheduleError(f"the model already has early exits ({', '.join(exits_of(unwrap(model)).names)}); "
                                "a model takes one early_exits instance: list all exits in it", path="")
        inner = unwrap(model)
        config = expand_builtin({k: v for k, v in dict(config).items() if k != "class"}, inner,
                                order=lambda names: forward_positions(inner, names, input_shape))
        spec = parse_early_exit_config(config)
        attach_exits(unwrap(model), spec, num_classes=num_classes, input_shape=input_shape, name=name)
        return cls(model)

    @classmethod
    def of(cls, model: nn.Module) -> Optional["EarlyExits"]:
        """The exits attached to ``model`` (None when it has none)."""
        return cls(model) if exits_of(unwrap(model)) is not None else None

    # ----------------------------------------------------------------- what the model holds
    @property
    def exit_set(self) -> ExitSet:
        """The model's ExitSet (branches, attach points, criteria, thresholds)."""
        found = exits_of(unwrap(self.model))
        if found is None:
            raise DistillEEError(f"{type(unwrap(self.model)).__name__} has no early exits attached")
        return found

    @property
    def name(self) -> str:
        """The schedule instance name the exits were attached under."""
        return self.exit_set.instance_name

    @property
    def spec(self) -> EarlyExitSpec:
        """The validated configuration the exits were attached with."""
        return parse_early_exit_config(self.config)

    @property
    def config(self) -> Dict[str, Any]:
        """The configuration the exits were attached with (plain values)."""
        for step in structure_steps(self.model):
            if step.get("kind") == EXITS_STEP:
                return dict(step["config"])
        raise DistillEEError("the model's structure steps do not record how its exits were attached")

    @property
    def exit_names(self) -> List[str]:
        """Exit names in depth order (final classifier excluded)."""
        return self.exit_set.names

    @property
    def output_names(self) -> List[str]:
        """Exit names followed by the final classifier's name."""
        return self.exit_set.output_names

    @property
    def criteria(self) -> List[str]:
        """Each exit's criterion."""
        return list(self.exit_set.criteria)

    @property
    def thresholds(self) -> List[Optional[float]]:
        """Each exit's threshold (None: never taken)."""
        return list(self.exit_set.thresholds)

    def set_thresholds(self, thresholds: ThresholdArg) -> None:
        """Replace thresholds: a list in exit order or a mapping exit name -> threshold (others kept)."""
        self.exit_set.set_thresholds(thresholds)

    def branch_parameters(self) -> List[nn.Parameter]:
        """Parameters of every branch (and of the learned deciders, if any)."""
        return list(self.exit_set.parameters())

    def soft_ensemble(self, x: torch.Tensor) -> torch.Tensor:
        """Gated exits' soft ensemble of ``x``: every exit computed and mixed by its gate (Scardapane et al.,
        2020); class probabilities (N, C)."""
        exit_set = self.exit_set
        deciders = exit_set.learned_deciders
        if len(deciders) != len(exit_set):
            raise DistillEEError("the soft ensemble needs a learned decider (gate) on every exit")
        multi = self.multi_exit_model()
        with eval_mode(multi), torch.no_grad():
            logits = multi.simulate(x)
            return soft_ensemble(logits, [deciders[n] for n in exit_set.names])

    # ----------------------------------------------------------------- inference
    def multi_exit_model(self, model: Optional[nn.Module] = None) -> MultiExitModel:
        """The model (default: the one the exits are attached to) cut into stages with these exits.

        A copy of the model carries its own ExitSet, which is used.
        """
        model = unwrap(self.model if model is None else model)
        exit_set = exits_of(model) or self.exit_set
        return MultiExitModel.from_model(model, exit_set)

    def evaluate(self, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                 masks: Optional[Mapping[str, Any]] = None, effective: bool = False) -> List[Dict[str, Any]]:
        """Per-exit statistics rows (see ``early_exit.stats``) over ``(inputs, targets)`` batches."""
        multi = self.multi_exit_model()
        with eval_mode(multi):
            logits, targets = collect_exit_logits(multi, batches)
        macs = exit_macs(multi, unwrap(self.model), masks, effective)
        return exit_statistics(logits, targets, multi.criteria, multi.thresholds, macs, multi.output_names)

    def exit_macs(self, masks: Optional[Mapping[str, Any]] = None, effective: bool = False) -> List[int]:
        """Per-sample MACs to leave at each exit, the final classifier last (see ``early_exit.cost``)."""
        return exit_macs(self.multi_exit_model(), unwrap(self.model), masks, effective)

    def detach(self) -> None:
        """Remove the branches (and their structure step) from the model."""
        detach_exits(unwrap(self.model))

    def __repr__(self) -> str:
        return f"EarlyExits({self.name!r}, exits={self.exit_names}, thresholds={self.thresholds})"


def backbone_modules(model: nn.Module) -> List[nn.Module]:
    """The modules of ``model`` outside its exit branches and its routing's gates or policy."""
    side = {id(m) for top in unwrap(model).modules() if isinstance(top, (ExitSet, DynamicComputation))
            for m in top.modules()}
    return [m for m in model.modules() if id(m) not in side]


def backbone_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """The named parameters of ``model`` outside its exit branches (and its routing's gates or policy)."""
    inner = unwrap(model)
    prefix = "module." if inner is not model else ""
    skip = [f"{prefix}{name}." for name, m in inner.named_modules() if isinstance(m, (ExitSet, DynamicComputation))]
    return [(n, p) for n, p in model.named_parameters() if not any(n.startswith(s) for s in skip)]


# --------------------------------------------------------------------------- the structure step
class ExitsStep(StepKind):
    """Replays ``{"kind": "early_exits", "name", "config", "num_classes", "input_shape"}``."""

    def replay(self, model: nn.Module, step: Step, ctx: ReplayContext) -> EarlyExits:
        """Attach the saved exits (fresh branch weights; the checkpoint's weights are loaded afterwards)."""
        try:
            exits = EarlyExits.from_config(step["config"], model, num_classes=int(step["num_classes"]),
                                           input_shape=[int(s) for s in step["input_shape"]],
                                           name=str(step.get("name", "")))
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"malformed early-exit step ({err})") from None
        except ScheduleError as err:
            raise CheckpointError(f"the saved early-exit config does not fit this model: {err.message}") from None
        swap_into_optimizer(ctx, ctx.detached.pop(str(step.get("name", "")), None), exits.branch_parameters())
        notify_parameters_replaced(ctx.masks)
        return exits

    def undo(self, model: nn.Module, step: Step, ctx: ReplayContext) -> None:
        """Detach the exits; the optimizer's group for their parameters is refilled when they come back."""
        removed = detach_exits(unwrap(model))
        if removed is not None:
            ctx.detached[str(step.get("name", ""))] = list(removed.parameters())
        notify_parameters_replaced(ctx.masks)

    def state_prefixes(self, step: Step) -> List[str]:
        """The ExitSet's keys: ``early_exits.``."""
        return [f"{EXITS_ATTR}."]

    def describe(self, step: Step) -> str:
        """``early exits 'branchy'``."""
        return f"early exits {step.get('name', '')!r}"


STEP_KINDS.add(EXITS_STEP, ExitsStep())

