"""Binary pruning masks per parameter (Distiller's ``zeros_mask_dict`` of ParameterMasker)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import nn


class ParameterMasker:
    """The mask of one parameter and how it is applied (Distiller semantics)."""

    #: bumped whenever any mask is replaced, so the scheduler can skip re-applying unchanged masks
    changes = 0

    def __init__(self, param_name: str):
        self.param_name = param_name
        self._mask: Optional[torch.Tensor] = None
        self.mask_on_forward_only = False
        self.mask_gradients = False
        self.use_double_copies = False
        self.unmasked_copy: Optional[torch.Tensor] = None
        self.is_regularization_mask = False
        self._grad_hook = None
        #: bumped whenever this mask is replaced (the scheduler shares changed masks across processes)
        self.version = 0

    @property
    def mask(self) -> Optional[torch.Tensor]:
        """The 0/1 mask (None: the parameter is not masked)."""
        return self._mask

    @mask.setter
    def mask(self, value: Optional[torch.Tensor]) -> None:
        self._mask = value
        self.version += 1
        ParameterMasker.changes += 1

    @torch.no_grad()
    def apply_mask(self, param: torch.Tensor) -> torch.Tensor:
        """Zero the masked elements of ``param`` in place (keeping an unmasked copy if asked)."""
        return self._apply(param)

    def _apply(self, param: torch.Tensor) -> torch.Tensor:
        """``apply_mask`` without its own no-grad context (callers hold one)."""
        if self.mask is None:
            return param
        if self._mask.device != param.device:
            self._mask = self._mask.to(param.device)
        if self.use_double_copies:
            self.unmasked_copy = param.detach().clone()
        param.mul_(self.mask)
        if self.is_regularization_mask:
            self.mask = None
        return param

    @torch.no_grad()
    def revert_weights(self, param: torch.Tensor) -> None:
        """With double copies, restore the unmasked weights after the forward pass."""
        if self.use_double_copies and self.unmasked_copy is not None:
            param.copy_(self.unmasked_copy)
            self.unmasked_copy = None

    def mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Masked gradient, used as a tensor hook when ``mask_gradients`` is set."""
        if self.mask is None:
            return grad
        return grad * self.mask

    def ensure_gradient_hook(self, param: torch.Tensor) -> None:
        """Install the gradient-masking hook once."""
        if self.mask_gradients and self._grad_hook is None:
            self._grad_hook = param.register_hook(self.mask_gradient)

    def remove_gradient_hook(self) -> None:
        """Remove the gradient-masking hook, if one is installed."""
        if self._grad_hook is not None:
            self._grad_hook.remove()
            self._grad_hook = None

    def state_dict(self) -> Dict[str, Any]:
        """Mask and flags, as tensors and plain values."""
        return {
            "mask": self.mask,
            "mask_on_forward_only": self.mask_on_forward_only,
            "mask_gradients": self.mask_gradients,
            "use_double_copies": self.use_double_copies,
            "is_regularization_mask": self.is_regularization_mask,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.mask = state.get("mask")
        self.mask_on_forward_only = bool(state.get("mask_on_forward_only", False))
        self.mask_gradients = bool(state.get("mask_gradients", False))
        self.use_double_copies = bool(state.get("use_double_copies", False))
        self.is_regularization_mask = bool(state.get("is_regularization_mask", False))


class MaskDict(Dict[str, ParameterMasker]):
    """The masks of a model by parameter name, and who must hear when its parameters were replaced.

    Thinning replaces parameters by smaller ones; code holding the masks tells their owners (the
    CompressionScheduler re-reads the model's parameters) through ``parameters_replaced``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.listeners: List[Callable[[], None]] = []

    def parameters_replaced(self) -> None:
        """Tell every listener that parameters of the model were replaced."""
        for listener in list(self.listeners):
            listener()


def notify_parameters_replaced(masks: Optional[Mapping[str, ParameterMasker]]) -> None:
    """Tell the owners of ``masks`` (if it is a MaskDict) that parameters were replaced."""
    if isinstance(masks, MaskDict):
        masks.parameters_replaced()


def create_masks(model: nn.Module) -> MaskDict:
    """One empty ParameterMasker per named parameter of ``model``."""
    return MaskDict((name, ParameterMasker(name)) for name, _ in model.named_parameters())


def sparsity(tensor: torch.Tensor) -> float:
    """Fraction of exact zeros in ``tensor`` (0..1)."""
    n = tensor.numel()
    return 0.0 if n == 0 else 1.0 - float(torch.count_nonzero(tensor)) / n


@torch.no_grad()
def apply_masks(params: Dict[str, torch.Tensor], masks: Dict[str, ParameterMasker], is_forward: bool,
                forward_only: bool = False) -> None:
    """Apply every set mask; after the optimizer step (``is_forward=False``) skip forward-only masks;
    with ``forward_only`` apply just the forward-only ones (the others are still in force)."""
    for name, masker in masks.items():
        if masker._mask is None:
            continue
        if forward_only and not masker.mask_on_forward_only:
            continue
        if is_forward or not masker.mask_on_forward_only:
            masker._apply(params[name])
