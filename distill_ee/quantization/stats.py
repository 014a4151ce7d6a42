"""Activation statistics for quantization: collected on batches, saved and read as Distiller's stats YAML.

For every leaf module that takes and returns tensors, the statistics of each input and of the output::

    conv1:
      inputs:
        0: {min: -0.42, max: 2.8, avg_min: -0.4, avg_max: 2.7, mean: 0.13, std: 0.31, shape: '(1, 1, 28, 28)'}
      output: {min: ..., max: ..., avg_min: ..., avg_max: ..., mean: ..., std: ..., shape: ...}

``min``/``max`` are over everything seen, ``avg_min``/``avg_max`` the average of each batch's, ``mean`` and
``std`` over every value. Files are read with the safe loader; a malformed one is a ConfigError naming the
module and key.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
import yaml
from torch import nn

from ..atomic import atomic_write_text
from ..early_exit.exits import EarlyExits
from ..errors import ConfigError
from ..modules import eval_mode
from ..temporary_hooks import removing
from .quantset import quantization_of

STAT_KEYS = ("min", "max", "avg_min", "avg_max", "mean", "std")
Stats = Dict[str, Dict[str, Any]]


class _Running:
    """Statistics of one tensor over batches."""

    def __init__(self) -> None:
        self.min, self.max = math.inf, -math.inf
        self.sum_min = self.sum_max = 0.0
        self.batches = 0
        self.count = 0
        self.sum = self.sum_sq = 0.0
        self.shape: Optional[tuple] = None

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().double()
        low, high = float(t.min()), float(t.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.sum_min += low
        self.sum_max += high
        self.batches += 1
        self.count += t.numel()
        self.sum += float(t.sum())
        self.sum_sq += float((t * t).sum())
        self.shape = (1, *t.shape[1:])

    def result(self) -> Dict[str, Any]:
        mean = self.sum / self.count
        var = max(self.sum_sq / self.count - mean * mean, 0.0)
        return {"min": self.min, "max": self.max, "avg_min": self.sum_min / self.batches,
                "avg_max": self.sum_max / self.batches, "mean": mean, "std": math.sqrt(var),
                "shape": str(self.shape)}


def collect_stats(model: nn.Module, batches: Iterable[torch.Tensor], names: Optional[List[str]] = None) -> Stats:
    """Statistics of the inputs and output of every leaf module (or the modules ``names``) over ``batches``; a
    model with early exits runs every branch too, a quantized one runs in float meanwhile."""
    modules = dict(model.named_modules())
    chosen = names if names is not None else [n for n, m in modules.items() if n and not list(m.children())]
    running: Dict[str, Dict[str, Any]] = {n: {"inputs": {}, "output": _Running()} for n in chosen}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            entry = running[name]
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor) and a.is_floating_point():
                    entry["inputs"].setdefault(i, _Running()).add(a)
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                entry["output"].add(output)
        return record

    exits = EarlyExits.of(model)
    # exit branches run too; the multi-exit model is made first (making it runs the model on a dummy batch)
    run = exits.multi_exit_model().simulate if exits is not None else model
    handles = [modules[n].register_forward_hook(hook(n)) for n in chosen]
    qset = quantization_of(model)
    # the float model's statistics (what the ranges are taken from)
    with removing(handles), eval_mode(model), torch.no_grad(), qset.suspended() if qset else nullcontext():
        for x in batches:
            run(x)
    out: Stats = {}
    for name, entry in running.items():
        if entry["output"].batches == 0:
            continue
        out[name] = {"inputs": {i: r.result() for i, r in entry["inputs"].items()},
                     "output": entry["output"].result()}
    return out


def save_stats(path: Union[str, Path], stats: Stats) -> None:
    """Write ``stats`` as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(stats, sort_keys=False))


def load_stats(path: Union[str, Path]) -> Stats:
    """Statistics from a YAML file (ours or Distiller's), checked."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a stats file maps module names to their inputs' and output's statistics")
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "output" not in entry:
            raise ConfigError(f"{path}: {name}: needs `output` (and `inputs`) statistics")
        tensors = [("output", entry["output"])] + [(f"inputs.{i}", s) for i, s in (entry.get("inputs") or {}).items()]
        for where, stats in tensors:
            _check_tensor(path, f"{name}.{where}", stats)
    return raw


def _check_tensor(path: Union[str, Path], where: str, stats: Any) -> None:
    if not isinstance(stats, dict):
        raise ConfigError(f"{path}: {where}: statistics are a mapping of {', '.join(STAT_KEYS)}")
    for key in STAT_KEYS:
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: {where}.{key}: must be a finite number, got {value!r}")
    if stats["min"] > stats["max"]:
        raise ConfigError(f"{path}: {where}: min {stats['min']} is above max {stats['max']}")
