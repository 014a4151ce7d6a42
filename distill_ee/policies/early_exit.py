"""EarlyExit: BranchyNet-style side exits as a scheduled policy.

Lifecycle::

    EarlyExit.from_config(cfg, model, num_classes=10, input_shape=(1, 28, 28))
        # branches built (sizes inferred) and registered as model.early_exits; hooks off
    on_epoch_begin(ctx)          # due epoch: hooks on, model(x) also computes every exit's logits
      before_backward_pass(ctx)  # loss = w_final * ctx.loss + sum_k w_k * CE(exit_k, target)
    on_epoch_end(ctx)            # hooks off: branches cost nothing until the next due epoch
    epoch_metrics()              # {"exit1_loss": ..., "exit1_top1": ...} of the epoch, then reset
    multi_exit_model()           # the model cut into stages for real early-exit inference

Loss weights are constants or ramps over the policy's due epochs; ``final_loss_weight: auto`` is
1 - sum of the exits' weights. The policy's state (config, thresholds, criteria, branch weights) rebuilds it
without the schedule: ``rebuild_exits(model, state)``.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..early_exit.attach import EXITS_ATTR, ExitAttachment, ExitSet, attach_exits, eval_mode
from ..early_exit.cost import exit_macs
from ..early_exit.criteria import get_criterion
from ..early_exit.multi_exit import MultiExitModel
from ..early_exit.spec import EarlyExitSpec, parse_early_exit_config
from ..early_exit.stats import collect_exit_logits, exit_statistics
from ..errors import CheckpointError, DistillEEError, ScheduleError
from ..registry import EARLY_EXITS, EXIT_CRITERIA
from .base import HookContext, LossComponent, Policy, PolicyLoss

STATE_VERSION = 1


@EARLY_EXITS.register("EarlyExit")
class EarlyExit(Policy):
    """Side-branch classifiers attached to a model, trained jointly with it, and exited from at inference."""

    kind = "early_exit"
    needs_minibatch_hooks = True

    def __init__(self, spec: EarlyExitSpec, attachment: ExitAttachment, name: str = ""):
        super().__init__(name)
        self.spec = spec
        self.attachment = attachment
        self.criteria: List[str] = spec.criteria()
        self.thresholds: List[Optional[float]] = spec.thresholds()
        self.starting_epoch: Optional[int] = None
        self.ending_epoch: Optional[int] = None
        self.frequency: Optional[int] = None
        self._sums: List[Dict[str, torch.Tensor]] = []
        self._reset_metrics()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], model: nn.Module, *, num_classes: int,
                    input_shape: Tuple[int, ...], name: str = "") -> "EarlyExit":
        """Validate ``config`` (the schedule instance without ``class``) and attach its exits to ``model``."""
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise DistillEEError("attach early exits before wrapping the model in DistributedDataParallel "
                                 "(it fixes the parameters it synchronises when it is built)")
        config = {k: v for k, v in dict(config).items() if k != "class"}
        spec = parse_early_exit_config(config)
        return cls(spec, attach_exits(_unwrap(model), spec, num_classes=num_classes, input_shape=input_shape), name)

    # ----------------------------------------------------------------- accessors
    @property
    def model(self) -> nn.Module:
        """The model the exits are attached to."""
        return self.attachment.model

    @property
    def exit_set(self) -> ExitSet:
        """Names, attach modules and branches of the exits."""
        return self.attachment.exit_set

    @property
    def exit_names(self) -> List[str]:
        """Exit names in depth order (final classifier excluded)."""
        return list(self.exit_set.names)

    @property
    def output_names(self) -> List[str]:
        """Exit names followed by the final classifier's name."""
        return self.exit_set.output_names

    def branch_parameters(self) -> List[nn.Parameter]:
        """Parameters of every branch (to add to the optimizer as a parameter group)."""
        return list(self.exit_set.branches.parameters())

    def loss_weights(self, epoch: int) -> Tuple[List[float], float]:
        """(exit weights, final classifier weight) in ``epoch``."""
        weights = self.spec.exit_weights(epoch, self.starting_epoch, self.ending_epoch, self.frequency)
        return weights, self.spec.final_weight(weights)

    def set_thresholds(self, thresholds: Union[Sequence[Optional[float]], Mapping[str, Optional[float]]]) -> None:
        """Replace thresholds: a list in exit order or a mapping exit name -> threshold (others kept)."""
        if isinstance(thresholds, Mapping):
            unknown = [n for n in thresholds if n not in self.exit_names]
            if unknown:
                raise DistillEEError(f"no exit named {unknown[0]!r} (exits: {', '.join(self.exit_names)})")
            new = [thresholds.get(n, t) for n, t in zip(self.exit_names, self.thresholds)]
        else:
            new = list(thresholds)
            if len(new) != len(self.exit_names):
                raise DistillEEError(f"need {len(self.exit_names)} thresholds, got {len(new)}")
        for name, crit, value in zip(self.exit_names, self.criteria, new):
            problem = None if value is None else get_criterion(crit).check_threshold(value)
            if problem:
                raise DistillEEError(f"exit {name!r}: the {crit} threshold must be {problem}, got {value!r}")
        self.thresholds = [None if t is None else float(t) for t in new]

    # ----------------------------------------------------------------- hooks
    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Due epoch: install the hooks so ``model(x)`` computes the exits' logits."""
        self.attachment.enable()

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """Make sure the hooks are on (also when the epoch hook was skipped)."""
        self.attachment.enable()

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """Joint loss: final weight * the task loss + each exit's weight * its cross-entropy (terms that
        earlier policies added to ``ctx.loss`` are kept as they are)."""
        if ctx.loss is None or ctx.target is None:
            raise DistillEEError("early exits need the loss and the target in before_backward_pass "
                                 "(scheduler.before_backward_pass(..., loss, target=y))")
        logits = self.attachment.pop_logits()
        weights, final_weight = self.loss_weights(ctx.epoch)
        task = ctx.loss if ctx.task_loss is None else ctx.task_loss
        overall = ctx.loss + task * (final_weight - 1.0)
        components = []
        for name, exit_logits, weight, sums in zip(self.exit_names, logits, weights, self._sums):
            ce = F.cross_entropy(exit_logits, ctx.target)
            weighted = ce * weight
            overall = overall + weighted
            components.append(LossComponent(f"{name}_loss", weighted))
            self._accumulate(sums, ce, exit_logits, ctx.target)
        return PolicyLoss(overall, components)

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Remove the hooks until the next due epoch."""
        self.attachment.disable()

    # ----------------------------------------------------------------- training metrics
    def _reset_metrics(self) -> None:
        zero = torch.zeros(())
        self._sums = [{"loss": zero, "correct": zero, "count": zero} for _ in self.exit_set.names]

    @staticmethod
    def _accumulate(sums: Dict[str, torch.Tensor], ce: torch.Tensor, logits: torch.Tensor,
                    target: torch.Tensor) -> None:
        """Add one minibatch (kept as tensors: no device sync per step)."""
        with torch.no_grad():
            labels = target.argmax(dim=1) if target.dim() == 2 else target
            n = logits.shape[0]
            sums["loss"] = sums["loss"].to(ce.device) + ce.detach() * n
            sums["correct"] = sums["correct"].to(ce.device) + (logits.argmax(dim=1) == labels).sum()
            sums["count"] = sums["count"].to(ce.device) + n

    def epoch_metrics(self) -> Dict[str, float]:
        """Mean cross-entropy and top-1 (0-100) of each exit on the epoch's training batches; then reset."""
        out: Dict[str, float] = {}
        for name, sums in zip(self.exit_names, self._sums):
            count = float(sums["count"])
            if count:
                out[f"{name}_loss"] = float(sums["loss"]) / count
                out[f"{name}_top1"] = 100.0 * float(sums["correct"]) / count
        self._reset_metrics()
        return out

    # ----------------------------------------------------------------- inference
    def multi_exit_model(self, model: Optional[nn.Module] = None) -> MultiExitModel:
        """The model (default: the attached one) cut into stages with this policy's exits, criteria, thresholds.

        A model carrying its own ``early_exits`` (a copy of the attached one) uses its own branches.
        """
        model = _unwrap(self.model if model is None else model)
        exits = self.exit_set
        own = getattr(model, EXITS_ATTR, None)
        if own is not None and own is not exits.branches:
            exits = ExitSet(names=exits.names, attach=exits.attach, branches=own, num_classes=exits.num_classes,
                            input_shape=exits.input_shape, final_name=exits.final_name)
        return MultiExitModel.from_model(model, exits, self.criteria, self.thresholds, stages=self.spec.stages)

    def evaluate(self, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], masks: Optional[Mapping[str, Any]] = None,
                 effective: bool = False) -> List[Dict[str, Any]]:
        """Per-exit statistics rows (see ``early_exit.stats``) over ``(inputs, targets)`` batches."""
        multi = self.multi_exit_model()
        with eval_mode(multi):
            logits, targets = collect_exit_logits(multi, batches)
        macs = exit_macs(multi, _unwrap(self.model), masks, effective)
        return exit_statistics(logits, targets, multi.criteria, multi.thresholds, macs, multi.output_names)

    def exit_macs(self, masks: Optional[Mapping[str, Any]] = None, effective: bool = False) -> List[int]:
        """Per-sample MACs to leave at each exit, the final classifier last (see ``early_exit.cost``)."""
        multi = self.multi_exit_model()
        return exit_macs(multi, _unwrap(self.model), masks, effective)

    def detach(self) -> None:
        """Remove hooks and branches from the model."""
        self.attachment.detach()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """Config, thresholds, criteria and branch weights: plain types and tensors only."""
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "config": self.spec.to_config(),
            "num_classes": int(self.exit_set.num_classes),
            "input_shape": [int(s) for s in self.exit_set.input_shape],
            "exit_names": self.exit_names,
            "attach": list(self.exit_set.attach),
            "criteria": list(self.criteria),
            "thresholds": list(self.thresholds),
            "branches": {n: dict(self.exit_set.branches[n].state_dict()) for n in self.exit_names},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore thresholds, criteria and branch weights saved by ``state_dict``."""
        names = list(state.get("exit_names", []))
        if names != self.exit_names:
            raise CheckpointError(f"the checkpoint's exits {names} do not match this schedule's {self.exit_names}")
        unknown = [c for c in state["criteria"] if c not in EXIT_CRITERIA]
        if unknown:
            raise CheckpointError(f"the checkpoint names an unknown exit criterion {unknown[0]!r}")
        self.criteria = list(state["criteria"])
        self.set_thresholds(state["thresholds"])
        for name in names:
            try:
                self.exit_set.branches[name].load_state_dict(state["branches"][name])
            except (RuntimeError, KeyError) as err:
                reason = str(err).splitlines()[0]
                raise CheckpointError(f"exit {name!r}: branch weights do not fit ({reason})") from None

    def __repr__(self) -> str:
        return f"EarlyExit({self.name!r}, exits={self.exit_names}, thresholds={self.thresholds})"


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel / DistributedDataParallel wrapper (attach exits before wrapping)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


def attach_saved_exits(model: nn.Module, state: Dict[str, Any]) -> EarlyExit:
    """Attach the exits described by ``state`` (an EarlyExit ``state_dict``) to ``model`` with fresh weights;
    ``load_state_dict(state)`` then restores weights and thresholds (after thinning recipes, if any)."""
    try:
        return EarlyExit.from_config(state["config"], model, num_classes=int(state["num_classes"]),
                                     input_shape=tuple(int(s) for s in state["input_shape"]),
                                     name=str(state.get("name", "")))
    except KeyError as err:
        raise CheckpointError(f"early-exit state lacks {err.args[0]!r}") from None
    except ScheduleError as err:
        raise CheckpointError(f"the checkpoint's early-exit config does not fit this model: {err.message}") from None


def rebuild_exits(model: nn.Module, state: Dict[str, Any]) -> EarlyExit:
    """Re-attach the exits saved in ``state`` (an EarlyExit ``state_dict``) to ``model``, weights and
    thresholds included, without the schedule."""
    policy = attach_saved_exits(model, state)
    policy.load_state_dict(state)
    return policy
