"""KnowledgeDistillationPolicy: a frozen teacher's softened predictions teach the student (Hinton et al., 2015).

Distiller's policy, with its arguments: ``temperature`` and ``loss_weights`` (``DistillationLossWeights``:
``distill`` for the distillation term, ``student`` for the student's own loss, ``teacher`` for a teacher that
is trained as well, which this policy does not do: it must be 0). In each due step::

    loss = student * task loss + distill * T^2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))

plus whatever other policies added. The policy sees the student's input and logits through hooks on the
student model, so the training loop stays the same (Distiller's loop called ``kd_policy.forward(x)``). The
teacher runs in eval mode under ``torch.no_grad``; a teacher checkpoint made by this project restores its own
structure (exits, thinning, routing) with ``load_checkpoint`` before it is handed over.

    kd = KnowledgeDistillationPolicy(model, teacher, temperature=4.0,
                                     loss_weights=DistillationLossWeights(distill=0.7, student=0.3))
    scheduler.add_policy(kd, starting_epoch=0, ending_epoch=epochs)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..distillation import distillation_loss
from ..distributed import sum_across
from ..errors import ConfigError, DistillEEError
from ..modules import eval_mode, unwrap
from .base import HookContext, LossComponent, Policy, PolicyLoss


@dataclass
class DistillationLossWeights:
    """Weights of the distillation term, the student's own loss and a trained teacher's loss (Distiller's)."""

    distill: float = 0.5
    student: float = 0.5
    teacher: float = 0.0


class KnowledgeDistillationPolicy(Policy):
    """Adds the distillation term of a frozen teacher to the student's loss in the policy's epochs."""

    kind = "knowledge_distillation"
    changes_masks_in_minibatches = False

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 1.0,
                 loss_weights: Optional[DistillationLossWeights] = None, name: str = "kd"):
        super().__init__(name)
        weights = loss_weights or DistillationLossWeights()
        for field, value in (("temperature", temperature), ("distill", weights.distill),
                             ("student", weights.student)):
            if not (isinstance(value, (int, float)) and value == value and abs(value) != float("inf")):
                raise ConfigError(f"knowledge distillation: {field} must be a finite number, got {value!r}")
        if temperature <= 0:
            raise ConfigError(f"knowledge distillation: the temperature must be above 0, got {temperature}")
        if weights.distill < 0 or weights.student < 0:
            raise ConfigError("knowledge distillation: loss weights must be >= 0")
        if weights.teacher:
            raise ConfigError("knowledge distillation: the teacher is frozen here (eval mode, no gradients), so "
                              "its loss weight must be 0")
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.loss_weights = weights
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._input: Optional[torch.Tensor] = None
        self._logits: Optional[torch.Tensor] = None
        self._active = False
        inner = unwrap(student)
        self._handles = [inner.register_forward_pre_hook(self._on_input),
                         inner.register_forward_hook(self._on_output)]
        self._sums = torch.zeros(2)

    def _on_input(self, module: nn.Module, args: Any) -> None:
        if self._active and torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
            self._input = args[0]

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._active and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self._logits = output

    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Watch the student's training forward passes."""
        self._active = True

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """Forget the previous step's input and logits."""
        self._active = True
        self._input = self._logits = None

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x``: eval mode, no gradients."""
        with eval_mode(self.teacher), torch.no_grad():
            out = self.teacher(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise DistillEEError("knowledge distillation needs a teacher whose output is (batch, classes) logits")
        return out

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """student weight * the task loss + distill weight * the distillation term (other terms kept)."""
        if ctx.loss is None:
            raise DistillEEError("knowledge distillation needs the loss in before_backward_pass")
        if self._input is None or self._logits is None:
            raise DistillEEError("knowledge distillation saw no training forward pass of the student in this step")
        teacher = self.teacher_logits(self._input)
        if teacher.shape != self._logits.shape:
            raise DistillEEError(f"the teacher gives {tuple(teacher.shape)} logits for a student's "
                                 f"{tuple(self._logits.shape)}: they must predict the same classes")
        kd = distillation_loss(self._logits, teacher, self.temperature)
        task = ctx.loss if ctx.task_loss is None else ctx.task_loss
        w = self.loss_weights
        overall = ctx.loss + task * (w.student - 1.0) + kd * w.distill
        with torch.no_grad():
            self._sums = self._sums.to(kd.device) + torch.stack([kd.detach() * self._input.shape[0],
                                                                 torch.tensor(float(self._input.shape[0]),
                                                                              device=kd.device)])
        self._input = self._logits = None
        return PolicyLoss(overall, [LossComponent("distillation_loss", kd * w.distill)])

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Stop watching until the next due epoch."""
        self._active = False
        self._input = self._logits = None

    def epoch_metrics(self) -> Dict[str, float]:
        """Mean distillation term of the epoch's training steps (a collective under torch.distributed)."""
        total, count = sum_across([float(v) for v in self._sums])
        self._sums = torch.zeros(2)
        return {"distillation_loss": total / count} if count else {}

    def detach(self) -> None:
        """Remove the hooks from the student."""
        for h in self._handles:
            h.remove()
        self._handles: List[Any] = []

    def __repr__(self) -> str:
        return (f"KnowledgeDistillationPolicy(T={self.temperature:g}, distill={self.loss_weights.distill:g}, "
                f"student={self.loss_weights.student:g})")
