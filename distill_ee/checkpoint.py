"""Checkpoints: the model's structure steps, weights, optimizer and schedule state; safe and atomic.

``save_checkpoint(path, model, optimizer=..., scheduler=..., **extra)`` writes one file atomically (a
temporary file in the same folder, then a rename). ``load_checkpoint(model, path, ...)`` reads it with
``torch.load(weights_only=True)`` only, replays the saved structure steps on ``model`` (exits attached,
layers thinned, in their order; see ``structure.py``), loads the weights and, when given, the optimizer and
scheduler state. The sample app and a user's own loop use the same two calls::

    model = Net()                                        # fresh, as built by your code
    restored = distill_ee.load_checkpoint(model, "checkpoint.pth.tar")
    exits = distill_ee.EarlyExits.of(model)              # if the run had exits: thresholds included

A checkpoint is a dict of plain values and tensors: ``format``, ``structure``, ``state_dict`` and, when
given, ``optimizer``, ``compression_sched`` and any ``extra`` keys (``epoch``, ``arch`` ...).
"""
from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .components import load_components
from .errors import CheckpointError
from .modules import unwrap
from .structure import ReplayContext, reconcile_steps, structure_steps

PathLike = Union[str, Path]
#: version of the checkpoint layout written by ``save_checkpoint``
CHECKPOINT_FORMAT = 2


# --------------------------------------------------------------------------- files
def write_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
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


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
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


# --------------------------------------------------------------------------- saving
def checkpoint_state(model: nn.Module, *, optimizer: Optional[torch.optim.Optimizer] = None,
                     scheduler: Any = None, **extra: Any) -> Dict[str, Any]:
    """The checkpoint dict of ``model`` (structure steps and weights), the optimizer, the scheduler, ``extra``."""
    state: Dict[str, Any] = {"format": CHECKPOINT_FORMAT, "structure": structure_steps(model),
                             "state_dict": unwrap(model).state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["compression_sched"] = scheduler.state_dict()
    state.update(extra)
    return state


def save_checkpoint(path: PathLike, model: nn.Module, *, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, **extra: Any) -> None:
    """Write the checkpoint of ``model`` (and optimizer, scheduler, ``extra`` keys) to ``path`` atomically."""
    write_checkpoint(path, checkpoint_state(model, optimizer=optimizer, scheduler=scheduler, **extra))


# --------------------------------------------------------------------------- loading
@dataclass
class RestoredCheckpoint:
    """A loaded checkpoint: its dict and what replaying its structure steps created."""

    state: Dict[str, Any]
    replayed: List[Any] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        """A key of the checkpoint dict (``epoch``, ``arch`` ...)."""
        return self.state.get(key, default)

    @property
    def epoch(self) -> Optional[int]:
        """The epoch the checkpoint was saved after, if it says."""
        return self.state.get("epoch")


def load_checkpoint(model: nn.Module, source: Union[PathLike, Mapping[str, Any]], *,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                    restore_optimizer: bool = True, strict_schedule: bool = True,
                    map_location: Any = "cpu") -> RestoredCheckpoint:
    """Give ``model`` the checkpoint's structure and weights; then the optimizer's and scheduler's state.

    ``model`` is freshly built, or has the structure a schedule just gave it (exits); ``optimizer`` and
    ``scheduler`` are the ones built on it: replaying thinning updates their parameters and masks.
    ``restore_optimizer=False`` keeps the optimizer's state (a fresh start); ``strict_schedule=False``
    accepts a schedule whose policies differ from the checkpoint's. Raises CheckpointError when anything
    does not fit.
    """
    load_components()  # the structure step kinds
    where = str(source) if isinstance(source, (str, Path)) else "checkpoint"
    state = read_checkpoint(source, map_location) if isinstance(source, (str, Path)) else dict(source)
    masks = scheduler.masks if scheduler is not None else None
    try:
        done = reconcile_steps(model, saved_steps(state), ReplayContext(optimizer, masks))
        _load_weights(unwrap(model), state, done.new_prefixes)
        if scheduler is not None and "compression_sched" in state:
            scheduler.load_state_dict(state["compression_sched"], strict=strict_schedule)
        if optimizer is not None and restore_optimizer and "optimizer" in state:
            _load_optimizer(optimizer, state["optimizer"])
    except CheckpointError as err:
        raise type(err)(f"{where}: {err}") from None
    return RestoredCheckpoint(state, done.replayed)


def saved_steps(state: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The structure steps of a checkpoint dict (format 1 checkpoints: exits, then thinning recipes)."""
    if "structure" in state:
        return list(state["structure"])
    steps: List[Dict[str, Any]] = []
    legacy = state.get("early_exit")
    if isinstance(legacy, Mapping) and "config" in legacy:
        steps.append(_legacy_exits_step(legacy))
    steps.extend({"kind": "thinning", "recipe": r} for r in state.get("thinning_recipes") or [])
    return steps


def _legacy_exits_step(legacy: Mapping[str, Any]) -> Dict[str, Any]:
    """A format-1 checkpoint's exits, with their saved thresholds and criteria written into the config."""
    config = dict(legacy["config"])
    exits = {name: dict(body) for name, body in dict(config.get("exits", {})).items()}
    for name, threshold, criterion in zip(legacy.get("exit_names", []), legacy.get("thresholds", []),
                                          legacy.get("criteria", [])):
        if name in exits:
            exits[name]["threshold"] = threshold
            exits[name]["criterion"] = criterion
    config["exits"] = exits
    return {"kind": "early_exits", "name": str(legacy.get("name", "")), "config": config,
            "num_classes": legacy.get("num_classes"), "input_shape": legacy.get("input_shape")}


def _load_weights(model: nn.Module, state: Mapping[str, Any], new_prefixes: List[str]) -> None:
    """Load ``state_dict``; only the modules the model has beyond the checkpoint's steps may be missing."""
    weights = state.get("state_dict")
    if not isinstance(weights, Mapping):
        raise CheckpointError("the checkpoint has no 'state_dict'")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"weights do not fit this model: {lines[-1] if lines else exc}") from None
    legacy = "structure" not in state  # format 1 saved no extra state (the exits' thresholds were in the config)
    missing = [k for k in missing if not any(k.startswith(p) for p in new_prefixes)
               and not (legacy and k.endswith("._extra_state"))]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"weights do not fit this model ({what})")


class OptimizerStateError(CheckpointError):
    """The checkpoint's optimizer state does not fit the optimizer (restore without it, or rebuild it)."""


def _load_optimizer(optimizer: torch.optim.Optimizer, state: Any) -> None:
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as exc:
        raise OptimizerStateError(f"optimizer state does not fit ({exc})") from None
