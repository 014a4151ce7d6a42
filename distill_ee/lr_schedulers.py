"""Learning-rate schedulers a schedule may name: all of torch.optim.lr_scheduler plus Distiller's two."""
from __future__ import annotations

import inspect
from typing import List, Optional, Sequence

import torch
from torch.optim import lr_scheduler as torch_lr

from .registry import LR_SCHEDULERS


class PolynomialLR(torch_lr.LRScheduler):
    """Distiller's polynomial decay: lr = base_lr * (1 - epoch / T_max) ** power (``total_iters`` = T_max)."""

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: Optional[int] = None, power: float = 1.0,
                 total_iters: Optional[int] = None, last_epoch: int = -1):
        if T_max is None and total_iters is None:
            raise ValueError("PolynomialLR needs T_max (or total_iters)")
        self.T_max = int(T_max if T_max is not None else total_iters)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """Learning rates for the current epoch."""
        progress = min(self.last_epoch, self.T_max) / self.T_max
        return [base * (1.0 - progress) ** self.power for base in self.base_lrs]


class MultiStepMultiGammaLR(torch_lr.LRScheduler):
    """Distiller's multi-step decay with one gamma per milestone (gammas multiply cumulatively)."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gammas: Sequence[float],
                 last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        if len(milestones) != len(gammas):
            raise ValueError("milestones and gammas must have the same length")
        self.milestones = [int(m) for m in milestones]
        self.multiplicative_gammas = [1.0]
        for g in gammas:
            self.multiplicative_gammas.append(self.multiplicative_gammas[-1] * float(g))
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """Learning rates for the current epoch."""
        idx = sum(1 for m in self.milestones if self.last_epoch >= m)
        return [base * self.multiplicative_gammas[idx] for base in self.base_lrs]


def _register_torch_schedulers() -> None:
    for name, obj in vars(torch_lr).items():
        if name.startswith("_") or not inspect.isclass(obj) or name in LR_SCHEDULERS:
            continue
        # base classes, schedulers built from other schedulers, and ones that need a Python callable
        if name in ("LRScheduler", "_LRScheduler", "PolynomialLR", "ChainedScheduler", "SequentialLR",
                    "LambdaLR", "MultiplicativeLR"):
            continue
        is_sched = issubclass(obj, torch_lr.LRScheduler) or name == "ReduceLROnPlateau"
        if is_sched:
            LR_SCHEDULERS.add(name, obj)


LR_SCHEDULERS.add("PolynomialLR", PolynomialLR)
LR_SCHEDULERS.add("MultiStepMultiGammaLR", MultiStepMultiGammaLR)
_register_torch_schedulers()
