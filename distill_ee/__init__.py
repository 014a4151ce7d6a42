"""distill_ee: a compression framework where early exit is a scheduled policy next to pruning."""
from .errors import CheckpointError, ConfigError, DataError, DistillEEError, ScheduleError
from .schedule import file_config, load_schedule, schedule_from_text
from .scheduler import CompressionScheduler

__version__ = "0.1.0"

__all__ = ["CheckpointError", "CompressionScheduler", "ConfigError", "DataError", "DistillEEError",
           "ScheduleError", "file_config", "load_schedule", "schedule_from_text"]
