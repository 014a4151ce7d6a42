"""Activation statistics for quantization: collected on batches, saved and read as Distiller's stats YAML.

For every leaf module that takes and returns tensors, the statistics of each input and of the output::

    conv1:
      inputs:
        0: {min: -0.42, max: 2.8, avg_min: -0.4, avg_max: 2.7, mean: 0.13, std: 0.31, b: 0.22,
            shape: '(1, 1, 28, 28)'}
      output: {min: ..., max: ..., avg_min: ..., avg_max: ..., mean: ..., std: ..., shape: ...}

``min``/``max`` are over everything seen, ``avg_min``/``avg_max`` the running average of each sample's,
``mean`` over every value, ``std`` and ``b`` (the mean absolute deviation, which LAPLACE clipping reads) around
that mean in a second pass: Distiller's collector, to its arithmetic. Files are read with the safe loader; a
malformed one is a ConfigError naming the module and key; ``b`` may be absent (older files).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Dict, Iterable, List, Optional, Union

import torch
import yaml
from torch import nn

from ..arguments import ArgumentError, Checked
from ..atomic import atomic_write_text
from ..early_exit.exits import EarlyExits
from ..input_files import DATA_LIMIT
from ..registry import suggest
from ..schedule.source import load_as, read_yaml_file
from ..modules import eval_mode
from ..temporary_hooks import removing
from .quantset import quantization_of

STAT_KEYS = ("min", "max", "avg_min", "avg_max", "mean", "std")
#: the largest statistic a range (a float32 tensor) can hold
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
ENTRY_KEYS = ("inputs", "output")
Stats = Dict[str, Dict[str, Any]]


class _Running:
    """Statistics of one tensor over batches, as Distiller's ``QuantCalibrationStatsCollector`` keeps them, to its
    arithmetic: pass 1 updates min, max, the per-sample average min and max, and the mean; pass 2 the standard
    deviation and ``b`` around pass 1's mean.

    Distiller's running averages weigh what came before by the number of *values* seen so far (each batch's
    ``samples * features``) and a batch's per-sample minima by their number of samples, so ``avg_min`` leans
    towards the first batch; kept as it is, so that a stats file from here and one from Distiller agree."""

    def __init__(self) -> None:
        self.min, self.max = math.inf, -math.inf
        self.avg_min = self.avg_max = self.mean = 0.0
        self.std = self.b = 0.0
        self.numel = self.numel_second = 0
        self.shape: Optional[tuple] = None

    @staticmethod
    def _running_mean(values: torch.Tensor, previous: float, so_far: int) -> float:
        return (so_far * previous + values.sum().item()) / (so_far + values.numel())

    @staticmethod
    def _flat(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.to(torch.float32)
        return t.contiguous().view(t.size(0), -1)

    def add(self, t: torch.Tensor) -> None:
        """Pass 1: one batch's values."""
        act = self._flat(t)
        # one value per sample: the batch's min and max (per-sample ones would make avg_min equal avg_max)
        dim = 0 if act.numel() == act.shape[0] else 1
        low, high = act.min(dim=dim)[0], act.max(dim=dim)[0]
        self.min, self.max = min(self.min, low.min().item()), max(self.max, high.max().item())
        self.avg_min = self._running_mean(low, self.avg_min, self.numel)
        self.avg_max = self._running_mean(high, self.avg_max, self.numel)
        self.mean = self._running_mean(act, self.mean, self.numel)
        self.numel += act.numel()
        self.shape = (1, *t.shape[1:])

    def add_second(self, t: torch.Tensor) -> None:
        """Pass 2: the same batch's deviations from pass 1's mean."""
        act = self._flat(t)
        self.b = self._running_mean((act - self.mean).abs_(), self.b, self.numel_second)
        self.std = math.sqrt(self._running_mean((act - self.mean) ** 2, self.std ** 2, self.numel_second))
        self.numel_second += act.numel()

    def result(self) -> Dict[str, Any]:
        return {"min": self.min, "max": self.max, "avg_min": self.avg_min, "avg_max": self.avg_max,
                "mean": self.mean, "std": self.std, "b": self.b, "shape": str(self.shape)}


def collect_stats(model: nn.Module, batches: Iterable[torch.Tensor], names: Optional[List[str]] = None) -> Stats:
    """Statistics of the inputs and output of every leaf module (or the modules ``names``) over ``batches``, in
    Distiller's two passes over them; a model with early exits runs every branch too, a quantized one runs in
    float meanwhile."""
    batches = list(batches)
    modules = dict(model.named_modules())
    chosen = names if names is not None else [n for n, m in modules.items() if n and not list(m.children())]
    running: Dict[str, Dict[str, Any]] = {n: {"inputs": {}, "output": _Running()} for n in chosen}
    second = False

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            entry = running[name]
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor) and a.is_floating_point():
                    r = entry["inputs"].setdefault(i, _Running())
                    r.add_second(a) if second else r.add(a)
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                entry["output"].add_second(output) if second else entry["output"].add(output)
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
        second = True
        for x in batches:
            run(x)
    out: Stats = {}
    for name, entry in running.items():
        if entry["output"].numel == 0:
            continue
        out[name] = {"inputs": {i: r.result() for i, r in entry["inputs"].items()},
                     "output": entry["output"].result()}
    return out


def save_stats(path: Union[str, Path], stats: Stats) -> None:
    """Write ``stats`` as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(stats, sort_keys=False))


def load_stats(path: Union[str, Path]) -> Stats:
    """Statistics from a YAML file (ours or Distiller's): read as every file a user names is
    (``distill_ee.input_files``), parsed by the hardened loader and checked; errors located in the file."""
    source = read_yaml_file(str(path), "statistics file", DATA_LIMIT,
                            shape="a statistics file maps module names to their inputs' and output's statistics")
    return load_as(source, StatsFile)


def _module_map(value: Any) -> Stats:
    """Every module's statistics, checked."""
    if not isinstance(value, dict):
        raise ArgumentError("a statistics file maps module names to their inputs' and output's statistics")
    out: Stats = {}
    for name, entry in value.items():
        try:
            out[str(name)] = _entry(entry)
        except ArgumentError as err:
            raise err.under(name) from None
    return out


def _entry(entry: Any) -> Dict[str, Any]:
    """One module's statistics: ``output`` and, per input index, ``inputs``."""
    if not isinstance(entry, dict) or "output" not in entry:
        raise ArgumentError("needs `output` (and `inputs`) statistics")
    for key in entry:
        if key not in ENTRY_KEYS:
            raise ArgumentError(f"unknown key {key!r}", (key,), valid=list(ENTRY_KEYS),
                                suggestions=suggest(str(key), ENTRY_KEYS))
    inputs = entry.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise ArgumentError("`inputs` maps each input's index (0, 1 ...) to its statistics", ("inputs",))
    checked: Dict[str, Any] = {"output": _tensor(entry["output"], ("output",)), "inputs": {}}
    for index, stats in inputs.items():
        if isinstance(index, bool) or not (isinstance(index, int) or str(index).isdigit()):
            raise ArgumentError(f"an input's index is 0, 1 ..., got {index!r}", ("inputs", index))
        checked["inputs"][int(index)] = _tensor(stats, ("inputs", index))
    return checked


def _tensor(stats: Any, path: tuple) -> Dict[str, Any]:
    """One tensor's statistics: the finite numbers of STAT_KEYS (others kept as they are), min <= max."""
    if not isinstance(stats, dict):
        raise ArgumentError(f"statistics are a mapping of {', '.join(STAT_KEYS)}", path)
    for key in STAT_KEYS:
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ArgumentError(f"must be a finite number, got {value!r}", (*path, key))
        if abs(value) > FLOAT32_MAX:  # the ranges are float32 tensors
            raise ArgumentError(f"must be within float32's range (±{FLOAT32_MAX:.3g}), got {value!r}", (*path, key))
    b = stats.get("b")
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b <= FLOAT32_MAX):
        raise ArgumentError(f"must be a finite number of at least 0, got {b!r}", (*path, "b"))
    if stats["min"] > stats["max"]:
        raise ArgumentError(f"min {stats['min']} is above max {stats['max']}", path)
    return dict(stats)


#: what a statistics file holds: module name -> {inputs: {index: statistics}, output: statistics}
StatsFile = Annotated[Dict[str, Any], Checked("module name -> {inputs, output}", _module_map)]
