"""Freezing a model's backbone while a policy trains what sits beside it (exit branches, routing deciders).

The backbone's parameters stop requiring gradients for the policy's epochs (so the optimizer leaves them
exactly as they are: no gradient, no momentum, no weight decay), and during each training step its modules
run in eval mode, so that batch-norm statistics do not move either. No attachment (exit branches, routing,
quantization) is the backbone (``distill_ee.attachment.backbone_parameters``).
"""
from __future__ import annotations

from typing import List

from torch import nn

from ..attachment import backbone_modules, backbone_parameters
from ..modules import unwrap


class BackboneFreeze:
    """Freezes a model's backbone between ``freeze`` and ``release``; ``step_begin``/``step_end`` bracket a step."""

    def __init__(self) -> None:
        self._frozen: List[nn.Parameter] = []
        self._evaled: List[nn.Module] = []

    def freeze(self, model: nn.Module) -> None:
        """Backbone parameters stop requiring gradients (those that did)."""
        if not self._frozen:
            self._frozen = [p for _, p in backbone_parameters(unwrap(model)) if p.requires_grad]
            for p in self._frozen:
                p.requires_grad_(False)

    def step_begin(self, model: nn.Module) -> None:
        """The backbone's modules in eval mode for this step."""
        self._evaled = [m for m in backbone_modules(unwrap(model)) if m.training]
        for m in self._evaled:
            m.training = False

    def step_end(self) -> None:
        """The backbone's modules back in the mode the training loop set."""
        for m in self._evaled:
            m.training = True
        self._evaled = []

    def release(self) -> None:
        """Everything as before ``freeze``."""
        self.step_end()
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []
