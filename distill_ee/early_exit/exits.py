"""EarlyExits: the exits attached to a model, as a schedule component and as the object inference uses.

In a schedule, an ``early_exits`` instance (``class: EarlyExit``) builds itself: it parses its config,
attaches the branches to the model (an ``ExitSet``, through ``distill_ee.attachment.attach``, which records the
structure step), and adds the branch parameters to the optimizer as a parameter group. Its policy entry
(``policies.early_exit``) trains them. After training, or after a checkpoint was loaded, ``EarlyExits.of(model)`` gives the same view::

    exits = EarlyExits.of(model)
    multi = exits.multi_exit_model().eval()   # stages + branches + criteria + thresholds
    logits, exit_index = multi(x)             # real early exit
    rows = exits.evaluate(test_loader)        # per-exit statistics

All state lives in the model's ``ExitSet`` (branches, attach points, criteria, thresholds), so any number of
EarlyExits objects of one model agree, and re-attached exits are seen at once; ``config`` and ``spec`` are the
YAML view of it, with the current criteria and thresholds (after a calibration, the calibrated ones).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..attachment import AttachmentView, attach
from ..context import BuildContext
from ..errors import DistillEEError, ScheduleError
from ..inputs import InputLike
from ..modules import eval_mode, unwrap
from ..registry import EARLY_EXITS
from .attach import build_exits, detach_exits
from .cost import exit_macs
from .exit_set import ExitSet, ThresholdArg, exits_of
from .multi_exit import MultiExitModel
from .spec import EarlyExitSpec, InstanceArguments, parse_early_exit_config
from .gates import soft_ensemble
from .stats import collect_exit_logits, exit_statistics


@EARLY_EXITS.register("EarlyExit")
class EarlyExits(AttachmentView):
    """The exits of one model: names, criteria, thresholds, the multi-exit model and its statistics."""

    attachment_type = ExitSet
    #: what an ``early_exits`` instance may give (``build`` takes them as a mapping and checks them there)
    schedule_arguments = InstanceArguments

    # ----------------------------------------------------------------- construction
    @classmethod
    def build(cls, ctx: BuildContext, **config: Any) -> "EarlyExits":
        """Build from a schedule instance: attach the exits, check that the model can be cut into stages at
        them (now, not after training), and give the branch parameters to the optimizer."""
        exits = cls.from_config(config, ctx.model, num_classes=ctx.num_classes, input_shape=ctx.input_spec,
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
                    input_shape: InputLike, name: str = "") -> "EarlyExits":
        """Validate ``config`` (a schedule instance without ``class``) and attach its exits to ``model``."""
        existing = exits_of(model)
        if existing is not None:
            raise ScheduleError(f"the model already has early exits ({', '.join(existing.names)}); a model takes "
                                "one early_exits instance: list all exits in it", path="")
        exit_set = build_exits(unwrap(model), config, num_classes=num_classes, input_shape=input_shape, name=name)
        attach(model, exit_set)
        return cls(model)

    # ----------------------------------------------------------------- what the model holds
    @property
    def exit_set(self) -> ExitSet:
        """The model's ExitSet (branches, attach points, criteria, thresholds)."""
        return self.attachment

    @property
    def spec(self) -> EarlyExitSpec:
        """The validated configuration of the exits, with their current criteria and thresholds."""
        return parse_early_exit_config(self.config)

    @property
    def config(self) -> Dict[str, Any]:
        """The configuration the exits were attached with (plain values), with every exit's current criterion
        and threshold written in (what a schedule would say to get these exits as they are now)."""
        exit_set = self.exit_set
        config = copy.deepcopy(exit_set.attached_config)
        if not config:
            raise DistillEEError("the model's exits do not record how they were attached")
        exits = config.setdefault("exits", {})
        for name, criterion, threshold in zip(exit_set.names, exit_set.criteria, exit_set.thresholds):
            entry = exits.setdefault(name, {})
            entry["criterion"] = criterion
            if threshold is None:
                entry.pop("threshold", None)
            else:
                entry["threshold"] = threshold
        return config

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
