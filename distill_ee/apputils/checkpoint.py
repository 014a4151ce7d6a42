"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)`` only."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

from ..errors import CheckpointError

PathLike = Union[str, Path]


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint safely; one holding pickled Python objects is refused with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: refused to load: the checkpoint carries pickled Python objects that could run code "
            f"(only tensors, numbers, strings, lists and dicts are accepted). {first}".strip()) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dictionary, found {type(state).__name__}")
    return state
