"""Forward hooks that run the exit branches during an ordinary ``model(x)``, for joint training.

A hook on each attach module runs its branch on the module's output and keeps the logits until the loss asks
for them. The hooks exist only while enabled (the early-exit policy enables them in its due epochs), and
even then they do nothing when autograd is off (validation), so branches cost nothing outside training.
The branches are looked up on the model at each enable, so exits that were re-attached (a checkpoint replayed
under a schedule) are the ones that run.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from torch import nn

from ..errors import DistillEEError
from ..modules import unwrap
from .collaboration import run_branch, takes_previous
from .exit_set import ExitSet, exits_of


class ExitHooks:
    """The forward hooks that compute every exit's logits in training forward passes of ``model``."""

    def __init__(self, model: nn.Module, gradient_equilibrium: bool = False):
        self.model = model
        #: rescale the gradients meeting at each attach point (Li et al., 2019; see ``scale_gradient``)
        self.gradient_equilibrium = gradient_equilibrium
        self._logits: List[Optional[torch.Tensor]] = []
        self._final: Optional[torch.Tensor] = None
        self._handles: List[Any] = []

    @property
    def exit_set(self) -> ExitSet:
        """The model's exits."""
        found = exits_of(unwrap(self.model))
        if found is None:
            raise DistillEEError("the model has no early exits attached (they were detached)")
        return found

    @property
    def enabled(self) -> bool:
        """True while the hooks are installed."""
        return bool(self._handles)

    def enable(self) -> None:
        """Install the hooks (idempotent)."""
        if self._handles:
            return
        exit_set = self.exit_set
        root = unwrap(self.model)
        modules = dict(root.named_modules())
        self._logits = [None] * len(exit_set)
        self._final = None
        self._handles = [modules[a].register_forward_hook(self._hook(exit_set, k))
                         for k, a in enumerate(exit_set.attach)]
        self._handles.append(root.register_forward_hook(self._final_hook))

    def disable(self) -> None:
        """Remove the hooks and drop kept logits: branches cost nothing in forward."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._logits = []
        self._final = None

    def _hook(self, exit_set: ExitSet, k: int) -> Callable:
        branch, copy = exit_set.branch_list()[k], exit_set.copy_input[k]
        later = len(exit_set) - k  # classifiers after this attach point: the later exits and the final one

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
            if not torch.is_grad_enabled():
                return None
            read = output.clone() if copy else output
            previous = self._logits[k - 1] if k and takes_previous(branch) else None
            if not self.gradient_equilibrium:
                self._logits[k] = run_branch(branch, read, previous)
                return None
            self._logits[k] = run_branch(branch, scale_gradient(read, 1.0 / (later + 1)), previous)
            return scale_gradient(output, later / (later + 1))
        return hook

    def _final_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            self._final = output if isinstance(output, torch.Tensor) else None

    def pop_final(self) -> torch.Tensor:
        """The model's own output of the last training forward pass (the final classifier's logits)."""
        final, self._final = self._final, None
        if final is None:
            raise DistillEEError("no final logits: the exit hooks are disabled or the forward pass ran without "
                                 "autograd, or the model does not return one logits tensor")
        return final

    def pending(self) -> List[torch.Tensor]:
        """The logits computed by the last training forward pass and not yet taken by ``pop_logits``."""
        return [t for t in self._logits if t is not None]

    def pop_logits(self) -> List[torch.Tensor]:
        """The exits' logits of the last training forward pass, in exit order; forgotten afterwards."""
        names = self.exit_set.names
        logits = self._logits if self._logits else [None] * len(names)
        self._logits = [None] * len(names) if self._handles else []
        missing = [n for n, l in zip(names, logits) if l is None]
        if missing:
            state = "enabled" if self.enabled else "disabled (on_epoch_begin was not called)"
            raise DistillEEError(f"no logits for exit {missing[0]!r}: the exit hooks are {state}, or the forward "
                                 f"pass ran without autograd")
        return logits  # type: ignore[return-value]


class _ScaleGradient(torch.autograd.Function):
    """The identity forward; the gradient times a constant backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # noqa: D102
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``scale``.

    Gradient equilibrium (Li et al., 2019, "Improved Techniques for Training Adaptive Deep Networks", section
    3.1): at the i-th of n classifiers the features feed classifier i with their gradient scaled by 1/(n-i+1)
    and the rest of the network with (n-i)/(n-i+1), so that the gradient reaching stage i is the mean, not the
    sum, of the gradients of the n-i+1 classifiers that depend on it:
    dL/dx_i = 1/(n-i+1) * sum_{j>=i} dL_j/dx_i (1-based; the final classifier is the n-th).
    """
    return _ScaleGradient.apply(x, float(scale))
