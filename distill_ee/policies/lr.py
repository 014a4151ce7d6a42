"""LR policy: steps a torch LR scheduler at the end of each epoch in which it is due."""
from __future__ import annotations

from typing import Any, Dict

from torch.optim import lr_scheduler as torch_lr

from ..registry import LR_SCHEDULERS, Section, add_section
from .base import HookContext, Policy


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
