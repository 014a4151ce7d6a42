"""The distillation loss (Hinton et al., 2015), shared by knowledge distillation and exit self-distillation.

``distillation_loss(student, teacher, T) = T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged
over the batch. The T^2 factor keeps the soft targets' gradients at the scale of a hard-label loss when T
changes (Hinton et al., section 2). The teacher's logits carry no gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher's softened distribution || the student's), mean over the batch."""
    t = float(temperature)
    teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    student = F.log_softmax(student_logits / t, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)
