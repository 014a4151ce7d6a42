"""RegularizationPolicy: adds a regularizer's penalty to the loss and thresholds weights (Distiller semantics).

Lifecycle::

    before_backward_pass    loss + sum of the regularizer's penalties, reported as '<Class>_loss'
    on_minibatch_end        with a threshold_criteria: weak elements/groups are zeroed once (a one-shot
                            regularization mask); with keep_mask, at the last minibatch of the policy's
                            last epoch the thresholding mask is kept as a permanent mask

Unlike Distiller, a one-shot threshold mask never replaces a pruning mask the weight already has: the
weight is zeroed by both, and a kept threshold mask is combined with the pruning mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from ..pruning.masks import ParameterMasker
from ..registry import REGULARIZERS, Section, add_section
from ..regularization.regularizer import Regularizer
from .base import HookContext, LossComponent, Policy, PolicyLoss


@dataclass
class RegularizationArgs:
    """The ``args`` of a regularizer's policy entry."""

    keep_mask: bool = False


class RegularizationPolicy(Policy):
    """Schedules a regularizer over the epochs the schedule gives it."""

    kind = "regularizer"
    Args = RegularizationArgs

    def __init__(self, regularizer: Regularizer, keep_mask: bool = False, name: str = ""):
        super().__init__(name)
        self.regularizer = regularizer
        self.keep_mask = keep_mask
        self.is_last_epoch = False

    @classmethod
    def from_component(cls, component: Any, args: Any, name: str) -> "RegularizationPolicy":
        """The policy running ``component`` (a Regularizer) with its entry's RegularizationArgs."""
        return cls(component, keep_mask=args.keep_mask, name=name)

    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Note whether this is the policy's last epoch."""
        self.is_last_epoch = self.is_last(ctx.epoch)

    def dry_run(self, model: torch.nn.Module) -> None:
        """The penalty (and the threshold mask) of every regularized weight, on copies."""
        for name, param in model.named_parameters():
            if self.regularizer.handles(name):
                value = param.detach().clone()
                self.regularizer.loss(value, name, torch.zeros(()), {})
                if self.regularizer.threshold_criteria is not None:
                    self.regularizer.threshold(value, name, {name: ParameterMasker(name)})

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """The loss plus the regularizer's penalty on every weight it names."""
        device = ctx.loss.device if ctx.loss is not None else None
        reg_loss = torch.zeros((), device=device)
        for param_name, param in ctx.model.named_parameters():
            reg_loss = self.regularizer.loss(param, param_name, reg_loss, ctx.masks)
        overall = reg_loss if ctx.loss is None else ctx.loss + reg_loss
        component = LossComponent(type(self.regularizer).__name__ + "_loss", reg_loss)
        return PolicyLoss(overall_loss=overall, loss_components=[component])

    def on_minibatch_end(self, ctx: HookContext) -> None:
        """Zero the weights below the regularizer's threshold (kept as a mask at the very end with keep_mask)."""
        if self.regularizer.threshold_criteria is None:
            return
        keep = (
            self.keep_mask
            and self.is_last_epoch
            and ctx.minibatches_per_epoch is not None
            and ctx.minibatch_id == ctx.minibatches_per_epoch - 1
        )
        for param_name, param in ctx.model.named_parameters():
            if param_name in ctx.masks and self.regularizer.handles(param_name):
                self._threshold(param_name, param, ctx.masks, keep)

    @torch.no_grad()
    def _threshold(self, param_name: str, param: torch.Tensor, masks: Dict[str, Any], keep: bool) -> None:
        masker = masks[param_name]
        prior_mask, prior_flag = masker.mask, masker.is_regularization_mask
        masker.mask = None
        self.regularizer.threshold(param, param_name, masks)
        reg_mask = masker.mask
        masker.mask, masker.is_regularization_mask = prior_mask, prior_flag
        if reg_mask is None:
            return
        param.mul_(reg_mask)
        if keep:
            masker.mask = reg_mask if prior_mask is None else prior_mask * reg_mask
            masker.is_regularization_mask = False

    def state_dict(self) -> Dict[str, Any]:
        """Whether the current epoch is the policy's last."""
        return {"is_last_epoch": self.is_last_epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.is_last_epoch = bool(state.get("is_last_epoch", False))

    def __repr__(self) -> str:
        return f"RegularizationPolicy({self.name!r}, regularizer={self.regularizer!r})"


add_section(Section("regularizers", "regularizer", REGULARIZERS, order=20, policy=RegularizationPolicy))
