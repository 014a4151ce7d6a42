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
given, ``optimizer``, ``compression_sched`` and any ``extra`` keys (``epoch``, ``arch`` ...), plus ``sha256``,
the digest of all the rest: a file whose bytes changed after it was written is refused when read. A
checkpoint Distiller wrote is read with its own names admitted and nothing else, and converted
(``distiller_checkpoint.py``).
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .atomic import atomic_write
from .components import load_components
from .distiller_checkpoint import (CONVERTED_KEY, from_distiller, is_distiller_checkpoint, read_distiller_file,
                                   resolve_distiller_thinning)
from .errors import CheckpointError
from .modules import first_line, unwrap
from .structure import ReplayContext, reconcile_steps, structure_steps

PathLike = Union[str, Path]
#: version of the checkpoint layout written by ``save_checkpoint``
CHECKPOINT_FORMAT = 2
#: the key holding the SHA-256 of everything else in the file
CHECKSUM_KEY = "sha256"


# --------------------------------------------------------------------------- files
def write_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, with the SHA-256 of its contents (key ``sha256``)."""
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    state[CHECKSUM_KEY] = payload_digest(state)
    atomic_write(path, lambda fh: torch.save(state, fh))


def read_checkpoint(path: PathLike, map_location: Any = "cpu", *, verify: bool = True) -> Dict[str, Any]:
    """Read a checkpoint safely: pickled Python objects refused (a Distiller checkpoint's own names admitted and
    the checkpoint converted), structure checked and, when the file carries one, its SHA-256 verified
    (``verify=False`` skips that); every problem is one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty, not a checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # torch.save: a zip archive (a pickle: legacy)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; this file "
                              f"starts with {head!r})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a file torch.save wrote: "
                                  f"{first_line(exc)})") from None
        state = read_distiller_file(path, map_location)  # Distiller's names admitted, any other global refused
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged: "
                              f"{first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dictionary, found {type(state).__name__}")
    if is_distiller_checkpoint(state):
        state = from_distiller(state, path)
    try:
        check_checkpoint(state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if verify and CHECKSUM_KEY in state:
        saved = state.pop(CHECKSUM_KEY)
        if saved != payload_digest(state):
            raise CheckpointError(f"{path}: the checkpoint is damaged: its contents do not match the SHA-256 it "
                                  "was saved with (bytes changed on disk or in a copy)")
    state.pop(CHECKSUM_KEY, None)
    return state


def payload_digest(state: Mapping[str, Any]) -> str:
    """The SHA-256 of a checkpoint dict's contents: every key, value and tensor (dtype, shape and bytes)."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        try:
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):  # dtypes without a byte view
            digest.update(repr(tensor.tolist()).encode())
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def check_checkpoint(state: Mapping[str, Any]) -> None:
    """CheckpointError naming the first key whose value has the wrong type or shape."""
    _expect(state, "structure", list, "a list of structure steps")
    for i, step in enumerate(state.get("structure") or []):
        if not isinstance(step, Mapping) or not isinstance(step.get("kind"), str):
            raise CheckpointError(f"malformed checkpoint: structure step {i + 1} is not a mapping with a 'kind'")
    _expect(state, "state_dict", Mapping, "a mapping of parameter names to tensors")
    for name, value in (state.get("state_dict") or {}).items():
        if not isinstance(name, str) or (not isinstance(value, torch.Tensor) and not name.endswith("_extra_state")):
            raise CheckpointError(f"malformed checkpoint: state_dict entry {name!r} is not a tensor")
    _expect(state, "optimizer", Mapping, "an optimizer state dict")
    optimizer = state.get("optimizer")
    if optimizer is not None and (not isinstance(optimizer.get("state"), Mapping)
                                  or not isinstance(optimizer.get("param_groups"), list)):
        raise CheckpointError("malformed checkpoint: 'optimizer' lacks its 'state' mapping or 'param_groups' list")
    _expect(state, "compression_sched", Mapping, "a schedule state dict")
    schedule = state.get("compression_sched")
    if schedule is not None:
        for key in ("masks", "policies"):
            if not isinstance(schedule.get(key, {}), Mapping):
                raise CheckpointError(f"malformed checkpoint: 'compression_sched.{key}' must be a mapping, got "
                                      f"{type(schedule.get(key)).__name__}")


def _expect(state: Mapping[str, Any], key: str, kind: Any, what: str) -> None:
    if key in state and state[key] is not None and not isinstance(state[key], kind):
        raise CheckpointError(f"malformed checkpoint: {key!r} must be {what}, got {type(state[key]).__name__}")


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
                    map_location: Any = "cpu", verify: bool = True) -> RestoredCheckpoint:
    """Give ``model`` the checkpoint's structure and weights; then the optimizer's and scheduler's state.

    ``model`` is freshly built, or has the structure a schedule just gave it (exits); ``optimizer`` and
    ``scheduler`` are the ones built on it: replaying thinning updates their parameters and masks.
    ``restore_optimizer=False`` keeps the optimizer's state (a fresh start); ``strict_schedule=False``
    accepts a schedule whose policies differ from the checkpoint's; ``verify=False`` loads a file whose
    checksum does not match. A Distiller checkpoint is converted (its thinning replayed, its masks and
    optimizer state restored). Raises CheckpointError when anything does not fit.
    """
    load_components()  # the structure step kinds
    if isinstance(source, (str, Path)):
        state = read_checkpoint(source, map_location, verify=verify)
    else:
        state = from_distiller(source, "the checkpoint") if is_distiller_checkpoint(source) else dict(source)
        check_checkpoint(state)
    masks = scheduler.masks if scheduler is not None else None
    strict_schedule = strict_schedule and CONVERTED_KEY not in state  # Distiller saved masks, no policy state
    try:
        state = resolve_distiller_thinning(unwrap(model), state)
        done = reconcile_steps(model, saved_steps(state), ReplayContext(optimizer, masks),
                               input_shape=state.get("input_shape"))
        _load_weights(unwrap(model), state, done.new_prefixes)
        if scheduler is not None and "compression_sched" in state:
            _load_schedule_state(scheduler, state["compression_sched"], strict_schedule)
        if optimizer is not None and restore_optimizer and "optimizer" in state:
            _load_optimizer(optimizer, state["optimizer"])
    except CheckpointError as err:
        if isinstance(source, (str, Path)):
            raise type(err)(f"{source}: {err}") from None
        raise
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
    if not isinstance(legacy.get("config"), Mapping) or not isinstance(legacy["config"].get("exits", {}), Mapping):
        raise CheckpointError("malformed checkpoint: the early-exit record's 'config' must be a mapping of exits")
    for key in ("exit_names", "thresholds", "criteria"):
        if not isinstance(legacy.get(key, []), (list, tuple)):
            raise CheckpointError(f"malformed checkpoint: the early-exit record's {key!r} must be a list")
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
    bad = [k for k, v in weights.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"the weights are not finite ({bad[0]}{more}): the training that saved them "
                              "diverged; resume from an earlier checkpoint")
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


def _load_schedule_state(scheduler: Any, state: Any, strict: bool) -> None:
    try:
        scheduler.load_state_dict(state, strict=strict)
    except CheckpointError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"the schedule state does not fit this schedule ({type(exc).__name__}: "
                              f"{first_line(exc)})") from None


def _check_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """OptimizerStateError unless the saved groups hold as many parameters as the optimizer's and every saved
    per-parameter tensor (momentum buffers ...) has its parameter's shape (torch would accept it and fail at the
    next step)."""
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) and isinstance(g.get("params"), list)
                                               for g in groups):
        raise OptimizerStateError("optimizer state does not fit (malformed 'param_groups')")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [i for g in groups for i in g["params"]]
    if len(groups) != len(optimizer.param_groups) or len(saved_ids) != len(params):
        raise OptimizerStateError(f"optimizer state does not fit (it holds {len(saved_ids)} parameters in "
                                  f"{len(groups)} groups, the optimizer {len(params)} in "
                                  f"{len(optimizer.param_groups)})")
    by_id = dict(zip(saved_ids, params))
    for key, values in state["state"].items():
        param = by_id.get(key)
        if param is None or not isinstance(values, Mapping):
            raise OptimizerStateError(f"optimizer state does not fit (state for an unknown parameter {key!r})")
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise OptimizerStateError(f"optimizer state does not fit ({name!r} of parameter "
                                          f"{saved_ids.index(key)} has shape {tuple(value.shape)}, the parameter "
                                          f"{tuple(param.shape)})")


class OptimizerStateError(CheckpointError):
    """The checkpoint's optimizer state does not fit the optimizer (restore without it, or rebuild it)."""


def _load_optimizer(optimizer: torch.optim.Optimizer, state: Any) -> None:
    _check_optimizer_state(optimizer, state)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as exc:
        raise OptimizerStateError(f"optimizer state does not fit ({exc})") from None
