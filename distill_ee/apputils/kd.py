"""The sample app's knowledge distillation: the --kd-* flags -> a frozen teacher and Distiller's policy."""
from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..checkpoint import load_checkpoint, read_checkpoint
from ..errors import CheckpointError, ConfigError, DistillEEError
from ..modules import eval_mode
from ..policies.knowledge_distillation import DistillationLossWeights, KnowledgeDistillationPolicy
from ..scheduler import CompressionScheduler
from .models import create_model

log = logging.getLogger("distill_ee")


def make_teacher(args: argparse.Namespace, num_classes: int, in_channels: int, example: torch.Tensor,
                 device: torch.device) -> nn.Module:
    """The teacher of --kd-teacher (its checkpoint's structure and weights with --kd-resume), frozen, checked
    to predict ``num_classes`` classes on ``example``."""
    try:
        teacher = create_model(args.kd_teacher, num_classes=num_classes, in_channels=in_channels,
                               pretrained=args.kd_pretrained)
    except DistillEEError as err:
        raise ConfigError(f"--kd-teacher {args.kd_teacher}: {err}") from None
    if args.kd_resume:
        try:
            state = read_checkpoint(args.kd_resume, verify=not args.skip_checksum)
        except CheckpointError as err:
            raise CheckpointError(f"--kd-resume {err}") from None
        if state.get("arch") not in (None, args.kd_teacher):
            raise CheckpointError(f"--kd-resume {args.kd_resume}: checkpoint is for --arch {state.get('arch')!r}, "
                                  f"not --kd-teacher {args.kd_teacher!r}")
        try:
            load_checkpoint(teacher, state)
        except CheckpointError as err:
            raise CheckpointError(f"--kd-resume {args.kd_resume}: {err}") from None
    teacher.to(device)
    with eval_mode(teacher), torch.no_grad():
        out = teacher(example)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != num_classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--kd-teacher {args.kd_teacher}: the teacher must give (batch, {num_classes}) logits on "
                          f"this dataset, got {got}")
    return teacher


def add_kd_policy(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Optional[CompressionScheduler], num_classes: int, in_channels: int,
                  example: torch.Tensor, device: torch.device) -> Optional[CompressionScheduler]:
    """The scheduler with the KD policy added from --kd-start-epoch to the end (a new scheduler when the run has
    none); the scheduler unchanged without --kd-teacher."""
    if args.kd_teacher is None or args.evaluate or args.sense:
        return scheduler
    teacher = make_teacher(args, num_classes, in_channels, example, device)
    if scheduler is None:
        scheduler = CompressionScheduler(model, optimizer)
    policy = KnowledgeDistillationPolicy(model, teacher, args.kd_temperature,
                                         DistillationLossWeights(args.kd_distill_wt, args.kd_student_wt))
    scheduler.add_policy(policy, starting_epoch=args.kd_start_epoch, ending_epoch=max(args.epochs, 1))
    log.info("Knowledge distillation from %s%s: T=%g, distill weight %g, student weight %g, from epoch %d",
             args.kd_teacher, f" ({args.kd_resume})" if args.kd_resume else "", args.kd_temperature,
             args.kd_distill_wt, args.kd_student_wt, args.kd_start_epoch)
    return scheduler


def kd_summary(args: argparse.Namespace) -> Dict[str, Any]:
    """The distillation settings for summary.json (empty without --kd-teacher)."""
    if args.kd_teacher is None:
        return {}
    return {"kd": {"teacher": args.kd_teacher, "teacher_checkpoint": args.kd_resume,
                   "temperature": args.kd_temperature, "distill_weight": args.kd_distill_wt,
                   "student_weight": args.kd_student_wt, "start_epoch": args.kd_start_epoch}}
