"""distill_ee: a compression framework where early exit is a scheduled policy next to pruning.

The public names below are imported on first use, so that ``distill_ee.deploy`` (the ONNX Runtime runtime)
and ``distill_ee.errors`` import without torch.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

__version__ = "0.2.0"

#: public name -> (module, attribute; None for the module itself)
_EXPORTS: Dict[str, Tuple[str, Any]] = {
    "distributed": (".distributed", None),
    "load_checkpoint": (".checkpoint", "load_checkpoint"),
    "read_checkpoint": (".checkpoint", "read_checkpoint"),
    "save_checkpoint": (".checkpoint", "save_checkpoint"),
    "write_checkpoint": (".checkpoint", "write_checkpoint"),
    "load_components": (".components", "load_components"),
    "EarlyExits": (".early_exit.exits", "EarlyExits"),
    "CheckpointError": (".errors", "CheckpointError"),
    "ConfigError": (".errors", "ConfigError"),
    "DataError": (".errors", "DataError"),
    "DistillEEError": (".errors", "DistillEEError"),
    "ScheduleError": (".errors", "ScheduleError"),
    "file_config": (".schedule", "file_config"),
    "load_schedule": (".schedule", "load_schedule"),
    "schedule_from_text": (".schedule", "schedule_from_text"),
    "CompressionScheduler": (".scheduler", "CompressionScheduler"),
    "structure_steps": (".structure", "structure_steps"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted([*globals(), *_EXPORTS])
