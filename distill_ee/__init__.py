"""distill_ee: a compression framework where early exit is a scheduled policy next to pruning."""
from . import distributed
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, write_checkpoint
from .components import load_components
from .early_exit.exits import EarlyExits
from .errors import CheckpointError, ConfigError, DataError, DistillEEError, ScheduleError
from .schedule import file_config, load_schedule, schedule_from_text
from .scheduler import CompressionScheduler
from .structure import structure_steps

__version__ = "0.2.0"

__all__ = ["CheckpointError", "CompressionScheduler", "ConfigError", "DataError", "DistillEEError", "EarlyExits",
           "ScheduleError", "distributed", "file_config", "load_checkpoint", "load_components", "load_schedule",
           "read_checkpoint", "save_checkpoint", "schedule_from_text", "structure_steps", "write_checkpoint"]
