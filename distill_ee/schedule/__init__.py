"""Schedules: YAML text -> validated Schedule -> components -> CompressionScheduler."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..components import load_components
from ..errors import ScheduleError
from ..scheduler import CompressionScheduler
from .build import build_scheduler
from .spec import Schedule, parse_schedule, read_schedule


def load_schedule(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], path: str, *,
                  example_input: Optional[torch.Tensor] = None) -> CompressionScheduler:
    """Read, validate and build the schedule file at ``path`` for ``model`` and ``optimizer``."""
    load_components()
    return build_scheduler(read_schedule(path), model, optimizer, example_input=example_input)


def schedule_from_text(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], text: str, *,
                       example_input: Optional[torch.Tensor] = None,
                       file: Optional[str] = None) -> CompressionScheduler:
    """Like ``load_schedule`` for schedule text held in memory."""
    load_components()
    return build_scheduler(parse_schedule(text, file), model, optimizer, example_input=example_input)


#: Distiller's name for ``load_schedule``
file_config = load_schedule

__all__ = ["Schedule", "ScheduleError", "build_scheduler", "file_config", "load_schedule", "parse_schedule",
           "read_schedule", "schedule_from_text"]
