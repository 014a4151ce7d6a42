"""Policy base class: the hook protocol every scheduled policy implements, one signature for all hooks.

Lifecycle of a policy inside a training run, as the CompressionScheduler drives it::

    on_epoch_begin(ctx)                 # once per epoch in which the policy is due
      on_minibatch_begin(ctx)           # every minibatch of such an epoch
      before_backward_pass(ctx)         # may return a PolicyLoss that replaces the loss
      before_parameter_optimization(ctx)
      on_minibatch_end(ctx)
    on_epoch_end(ctx)                   # ctx.metrics holds the validation metrics

Each hook has a no-op default; a policy overrides what it needs and owns its state_dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn


@dataclass
class LossComponent:
    """A named term that a policy added to the training loss."""

    name: str
    value: torch.Tensor


@dataclass
class PolicyLoss:
    """The loss after a policy changed it, and the named components it added."""

    overall_loss: torch.Tensor
    loss_components: List[LossComponent] = field(default_factory=list)


@dataclass
class HookContext:
    """Everything a hook may read; fields a hook does not receive are None."""

    epoch: int
    model: nn.Module
    optimizer: Optional[torch.optim.Optimizer] = None
    masks: Dict[str, Any] = field(default_factory=dict)
    minibatch_id: Optional[int] = None
    minibatches_per_epoch: Optional[int] = None
    loss: Optional[torch.Tensor] = None
    #: the loss the training loop passed, before any policy added to it
    task_loss: Optional[torch.Tensor] = None
    target: Optional[torch.Tensor] = None
    metrics: Optional[Dict[str, float]] = None


class Policy:
    """A scheduled piece of compression behaviour; subclasses override the hooks they need."""

    #: the schedule section a policy of this class comes from (``pruner``, ``lr_scheduler`` ...)
    kind: str = "policy"
    #: True when the policy must see every minibatch of an epoch in which it is due
    needs_minibatch_hooks: bool = True

    def __init__(self, name: str = ""):
        self.name = name

    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Called at the start of every epoch in which the policy is due."""

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """Called before the forward pass of each minibatch of a due epoch."""

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """Called after the loss is computed; may return a PolicyLoss replacing ``ctx.loss``."""
        return None

    def before_parameter_optimization(self, ctx: HookContext) -> None:
        """Called after backward and before ``optimizer.step()``."""

    def on_minibatch_end(self, ctx: HookContext) -> None:
        """Called after ``optimizer.step()``."""

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Called at the end of a due epoch; ``ctx.metrics`` carries validation metrics."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume this policy exactly."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
