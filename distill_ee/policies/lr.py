"""LR policy: steps a torch LR scheduler at the end of each epoch in which it is due."""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Dict

import torch
from torch.optim import lr_scheduler as torch_lr

from ..registry import LR_SCHEDULERS, Section, add_section
from .base import HookContext, Policy


#: the most epochs a dry run steps a copy of an LR scheduler through
DRY_RUN_EPOCHS = 1000


class LRPolicy(Policy):
    """Steps ``lr_scheduler`` once per due epoch; ReduceLROnPlateau reads ``metrics[mode]``."""

    kind = "lr_scheduler"
    needs_minibatch_hooks = False

    def __init__(self, lr_scheduler: Any, name: str = ""):
        super().__init__(name)
        self.lr_scheduler = lr_scheduler

    @classmethod
    def from_component(cls, component: Any, args: Any, name: str) -> "LRPolicy":
        """The policy stepping ``component`` (a torch LR scheduler)."""
        return cls(component, name=name)

    def dry_run(self, model: Any) -> None:
        """Step a copy of the LR scheduler (on a stand-in optimizer) through the window's epochs (up to
        DRY_RUN_EPOCHS): a schedule that divides by zero or reaches a non-finite rate fails now."""
        if isinstance(self.lr_scheduler, torch_lr.ReduceLROnPlateau):
            return
        real = self.lr_scheduler.optimizer
        stand_in = torch.optim.SGD([{**{k: v for k, v in group.items() if k != "params"},
                                     "params": [torch.zeros(1, requires_grad=True)]}
                                    for group in real.param_groups])
        twin = copy.deepcopy(self.lr_scheduler, memo={id(real): stand_in})
        epochs = len(self.due_epochs[:DRY_RUN_EPOCHS])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in range(epochs):
                twin.step()
                bad = [lr for lr in twin.get_last_lr() if not math.isfinite(lr)]
                if bad:
                    raise ValueError(f"the learning rate becomes {bad[0]} after {epoch + 1} step(s)")

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Advance the LR schedule by one epoch."""
        if isinstance(self.lr_scheduler, torch_lr.ReduceLROnPlateau):
            metrics = ctx.metrics or {}
            if self.lr_scheduler.mode in metrics:
                self.lr_scheduler.step(metrics[self.lr_scheduler.mode])
        else:
            self.lr_scheduler.step()

    def state_dict(self) -> Dict[str, Any]:
        """The wrapped scheduler's state."""
        return {"lr_scheduler": self.lr_scheduler.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the wrapped scheduler's state."""
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])


add_section(Section("lr_schedulers", "lr_scheduler", LR_SCHEDULERS, order=40, policy=LRPolicy))
