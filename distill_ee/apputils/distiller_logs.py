"""Distiller's logging flags of the sample app: the best scores, the masks' sparsity, the confusion matrix,
activation statistics and histograms, and parameter histograms (files in the run directory, not TensorBoard or
Excel)."""
from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import yaml
from tabulate import tabulate
from torch import nn

from ..atomic import atomic_write_csv, atomic_write_text
from ..pruning.activation import channel_zeros
from ..summaries import sparsity_summary, sparsity_table

log = logging.getLogger("distill_ee")

#: the modules whose outputs Distiller's summary statistics read (sparsity, L1, APoZ, mean per channel)
SUMMARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
#: the modules whose outputs Distiller's records statistics read (min, max, mean, std, L2 per sample)
RECORD_MODULES = (nn.Conv2d,)
#: the phases --activation-stats takes
PHASES = ("train", "valid", "test")
#: bins of each activation histogram (Distiller's collect_histograms uses 2048)
ACTIVATION_BINS = 2048
#: bins of each parameter histogram
PARAM_BINS = 64
#: at most this many module outputs are drawn in activation_histograms.png (the CSV has every one)
MAX_PLOTTED = 64


@dataclass
class Score:
    """One epoch's score as Distiller's SparsityAccuracyTracker keeps it."""

    epoch: int
    top1: float
    top5: Optional[float]
    sparsity: float
    params_nnz: int


class BestScores:
    """The epochs ranked as Distiller's SparsityAccuracyTracker ranks them: fewest nonzero weights first, then
    the higher top-1, the higher top-5, the later epoch."""

    def __init__(self, keep: int):
        self.keep = keep
        self.history: List[Score] = []

    def step(self, model: nn.Module, masks: Any, epoch: int, top1: float, top5: Optional[float]) -> None:
        """Add ``epoch``'s score, with the weights' sparsity and nonzero count now."""
        total = sparsity_summary(model, masks)[-1]
        self.history.append(Score(epoch, top1, top5, float(total["Fine (%)"]), int(total["NNZ (sparse)"])))
        self.history.sort(key=lambda s: (-s.params_nnz, s.top1, -math.inf if s.top5 is None else s.top5, s.epoch),
                          reverse=True)

    def lines(self) -> List[str]:
        """Distiller's ``==> Best [...]`` line for each of the best ``keep`` epochs, the best first."""
        return [f"==> Best [Top1: {s.top1:.3f}   Top5: {'-' if s.top5 is None else f'{s.top5:.3f}'}   "
                f"Sparsity:{s.sparsity:.2f}   NNZ-Params: {s.params_nnz} on epoch: {s.epoch}]"
                for s in self.history[:self.keep]]


def masks_sparsity_table(model: nn.Module, masks: Optional[Mapping[str, Any]]) -> str:
    """Distiller's masks sparsity table: each 2D and 4D weight's share of masked-off elements, then the total
    (a weight without a mask counts as dense)."""
    rows, size, dense = [], 0, 0.0
    for name, param in model.named_parameters():
        if param.dim() not in (2, 4):
            continue
        masker = masks.get(name) if masks else None
        mask = getattr(masker, "mask", None)
        density = 1.0 if mask is None else float(torch.count_nonzero(mask)) / mask.numel()
        size += param.numel()
        dense += param.numel() * density
        rows.append([name, 100.0 * (1.0 - density)])
    rows.append(["Total sparsity:", 100.0 * (1.0 - dense / size) if size else 0.0])
    return tabulate(rows, headers=["Name", "Fine (%)"], tablefmt="psql", floatfmt=".5f")


def confusion_table(matrix: torch.Tensor, names: Optional[Sequence[str]]) -> str:
    """The confusion matrix as a table: a row per true class, a column per predicted class."""
    labels = list(names) if names else [str(i) for i in range(matrix.shape[0])]
    body = [[label, *row] for label, row in zip(labels, matrix.tolist())]
    return tabulate(body, headers=["true \\ predicted", *labels], tablefmt="psql", disable_numparse=True)


class ActivationStats:
    """Distiller's activation statistics of one phase, collected by forward hooks while the block runs:
    per ReLU output its sparsity (percent zeros) and per channel its L1 norm, APoZ (average percentage of
    zeros) and mean (``sparsity_ofm``, ``l1_channels``, ``apoz_channels``, ``mean_channels``); per Conv2d
    output and sample, its min, max, mean, std and L2 norm (``records``)."""

    def __init__(self, model: nn.Module, phase: str):
        self.model = model
        self.phase = phase
        self.summaries: Dict[str, Dict[str, Any]] = {}
        self.records: Dict[str, Dict[str, Any]] = {}
        self._handles: List[Any] = []

    def __enter__(self) -> "ActivationStats":
        self.summaries, self.records = {}, {}
        for name, module in self.model.named_modules():
            if isinstance(module, SUMMARY_MODULES):
                self._handles.append(module.register_forward_hook(self._summary_hook(name)))
            elif isinstance(module, RECORD_MODULES):
                self._handles.append(module.register_forward_hook(self._record_hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _summary_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            out = output.detach().float()
            n, channels = out.shape[0], out.shape[1]
            flat = out.reshape(n, channels, -1)
            entry = self.summaries.setdefault(name, {
                "type": type(module).__name__, "shape": list(out.shape[1:]), "samples": 0, "zeros": 0.0,
                "l1": torch.zeros(channels), "apoz": torch.zeros(channels), "mean": torch.zeros(channels)})
            if entry["l1"].numel() != channels:  # a module called on outputs of several shapes: the first kept
                return
            entry["samples"] += n
            entry["zeros"] += 100.0 * float((out == 0).float().mean()) * n
            entry["l1"] += flat.abs().sum(-1).sum(0).cpu()
            entry["apoz"] += (100.0 * channel_zeros(out)).sum(0).cpu()
            entry["mean"] += flat.mean(-1).sum(0).cpu()
        return hook

    def _record_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 1:
                return
            act = output.detach().float().reshape(output.shape[0], -1)
            entry = self.records.setdefault(name, {"type": type(module).__name__, "shape": list(output.shape[1:]),
                                                   "rows": []})
            std = act.std(dim=1) if act.shape[1] > 1 else torch.zeros(act.shape[0])
            stats = torch.stack([act.min(dim=1).values, act.max(dim=1).values, act.mean(dim=1), std,
                                 act.norm(p=2, dim=1)], dim=1).cpu().tolist()
            entry["rows"].extend(stats)
        return hook

    def summary(self) -> Dict[str, Any]:
        """The summary statistics by module (the per-channel ones as lists)."""
        out: Dict[str, Any] = {}
        for name, e in self.summaries.items():
            n = max(e["samples"], 1)
            out[name] = {"type": e["type"], "shape": e["shape"], "samples": e["samples"],
                         "sparsity_ofm": round(e["zeros"] / n, 6),
                         "l1_channels": [round(v, 6) for v in (e["l1"] / n).tolist()],
                         "apoz_channels": [round(v, 6) for v in (e["apoz"] / n).tolist()],
                         "mean_channels": [round(v, 6) for v in (e["mean"] / n).tolist()]}
        return out

    def write(self, directory: Path, epoch: Optional[int]) -> List[Path]:
        """Write ``PHASE.yaml`` (summaries) and ``PHASE_records.csv`` (records) into ``directory``."""
        directory.mkdir(exist_ok=True)
        summary = directory / f"{self.phase}.yaml"
        atomic_write_text(summary, yaml.safe_dump({"phase": self.phase, "epoch": epoch, "modules": self.summary()},
                                                   sort_keys=False, default_flow_style=None))
        rows: List[List[Any]] = [["module", "type", "shape", "sample", "min", "max", "mean", "std", "l2"]]
        for name, e in self.records.items():
            shape = "x".join(map(str, e["shape"]))
            rows.extend([name, e["type"], shape, i, *(f"{v:.6g}" for v in r)] for i, r in enumerate(e["rows"]))
        records = atomic_write_csv(directory / f"{self.phase}_records.csv", rows, lineterminator="\n")
        log.info("Activation statistics (%s%s) written to %s and %s", self.phase,
                 "" if epoch is None else f", epoch {epoch}", summary, records)
        return [summary, records]


@torch.no_grad()
def confusion_pass(model: nn.Module, loader: Any, device: torch.device, num_classes: int,
              stats: Optional[ActivationStats]) -> torch.Tensor:
    """One pass over ``loader`` in eval mode (collecting ``stats`` when given); the confusion matrix of the
    model's output (rows: true class, columns: arg-max prediction)."""
    was_training = model.training
    model.eval()
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    try:
        if stats is not None:
            stats.__enter__()
        for inputs, target in loader:
            output = model(inputs.to(device))
            pred = output.argmax(dim=1).cpu().long()
            index = target.cpu().long() * num_classes + pred
            matrix += torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)
    finally:
        if stats is not None:
            stats.__exit__()
        model.train(was_training)
    return matrix


def _leaf_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]


def _tensors(module_inputs: Any, output: Any) -> List[Tuple[str, torch.Tensor]]:
    found = [(f"input{i}", t) for i, t in enumerate(module_inputs) if isinstance(t, torch.Tensor)]
    if isinstance(output, torch.Tensor):
        found.append(("output", output))
    return [(k, t) for k, t in found if t.is_floating_point() and t.numel()]


@torch.no_grad()
def _run_hooked(model: nn.Module, loader: Any, device: torch.device, hook: Any) -> None:
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: hook(n, i, o)) for name, m in _leaf_modules(model)]
    try:
        for inputs, _ in loader:
            model(inputs.to(device))
    finally:
        for handle in handles:
            handle.remove()


def activation_histograms(model: nn.Module, loader: Any, device: torch.device, directory: Path,
                          bins: int = ACTIVATION_BINS) -> List[Path]:
    """Distiller's activation histograms: every leaf module's inputs and output over ``loader``, in eval mode,
    ``bins`` bins between the tensor's min and max (a first pass finds them): ``activation_histograms.csv``,
    and ``activation_histograms.png`` of the outputs when matplotlib is installed."""
    was_training = model.training
    model.eval()
    ranges: Dict[Tuple[str, str], List[float]] = {}
    counts: Dict[Tuple[str, str], torch.Tensor] = {}

    def find_range(name: str, inputs: Any, output: Any) -> None:
        for kind, t in _tensors(inputs, output):
            lo, hi = float(t.min()), float(t.max())
            r = ranges.setdefault((name, kind), [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)

    def count(name: str, inputs: Any, output: Any) -> None:
        for kind, t in _tensors(inputs, output):
            lo, hi = ranges[(name, kind)]
            hist = torch.histc(t.detach().float().cpu(), bins=bins, min=lo, max=hi if hi > lo else lo + 1.0)
            counts[(name, kind)] = counts.get((name, kind), torch.zeros(bins)) + hist

    try:
        _run_hooked(model, loader, device, find_range)
        _run_hooked(model, loader, device, count)
    finally:
        model.train(was_training)
    rows: List[List[Any]] = [["module", "tensor", "bin", "low", "high", "count"]]
    for (name, kind), hist in counts.items():
        lo, hi = ranges[(name, kind)]
        width = ((hi if hi > lo else lo + 1.0) - lo) / bins
        rows.extend([name, kind, b, f"{lo + b * width:.6g}", f"{lo + (b + 1) * width:.6g}", int(c)]
                    for b, c in enumerate(hist.tolist()))
    paths = [atomic_write_csv(directory / "activation_histograms.csv", rows, lineterminator="\n")]
    png = _plot_histograms(counts, ranges, bins, directory / "activation_histograms.png")
    if png is not None:
        paths.append(png)
    return paths


def _plot_histograms(counts: Dict[Tuple[str, str], torch.Tensor], ranges: Dict[Tuple[str, str], List[float]],
                     bins: int, path: Path) -> Optional[Path]:
    """The module outputs' histograms in a grid (None without matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: activation_histograms.png is not drawn (the CSV has the counts)")
        return None
    outputs = [key for key in counts if key[1] == "output"][:MAX_PLOTTED]
    cols = max(1, min(4, len(outputs)))
    rows = max(1, -(-len(outputs) // cols))
    fig = Figure(figsize=(4 * cols, 2.6 * rows))
    FigureCanvasAgg(fig)
    for i, key in enumerate(outputs):
        lo, hi = ranges[key]
        hi = hi if hi > lo else lo + 1.0
        ax = fig.add_subplot(rows, cols, i + 1)
        edges = torch.linspace(lo, hi, bins + 1)
        ax.stairs(counts[key].numpy(), edges.numpy(), fill=True)
        ax.set_yscale("symlog")
        ax.set_title(key[0], fontsize="small")
        ax.tick_params(labelsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def append_param_histograms(model: nn.Module, epoch: int, path: Path, bins: int = PARAM_BINS) -> None:
    """Append ``epoch``'s histogram of every parameter to ``path`` (CSV: epoch, parameter, bin, low, high,
    count), in place of Distiller's TensorBoard histograms."""
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if new:
            writer.writerow(["epoch", "parameter", "bin", "low", "high", "count"])
        for name, param in model.named_parameters():
            values = param.detach().float().cpu().flatten()
            lo, hi = float(values.min()), float(values.max())
            hi = hi if hi > lo else lo + 1.0
            hist = torch.histc(values, bins=bins, min=lo, max=hi)
            width = (hi - lo) / bins
            writer.writerows([epoch, name, b, f"{lo + b * width:.6g}", f"{lo + (b + 1) * width:.6g}", int(c)]
                             for b, c in enumerate(hist.tolist()))


class EpochLogs:
    """What Distiller's logging flags add to each training epoch: activation statistics of the train and valid
    phases, the best scores, the masks' sparsity, parameter histograms and (with -v) the weights' sparsity."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, masks: Any, run_dir: Any):
        self.args, self.model, self.masks, self.run_dir = args, model, masks, run_dir
        self.best = BestScores(args.num_best_scores)
        self.stats: Dict[str, ActivationStats] = {}

    def phase(self, phase: str) -> Any:
        """A context collecting ``phase``'s activation statistics when --activation-stats asks for it."""
        if phase not in self.args.activation_stats:
            return contextlib.nullcontext()
        self.stats[phase] = ActivationStats(self.model, phase)
        return self.stats[phase]

    def end_epoch(self, epoch: int, score: float, top5: Optional[float]) -> None:
        """Log and write what the flags ask for at the end of ``epoch``."""
        if self.run_dir is not None:
            for stats in self.stats.values():
                stats.write(self.run_dir.file("activation_stats"), epoch)
            if self.args.param_hist:
                append_param_histograms(self.model, epoch, self.run_dir.file("param_histograms.csv"))
        self.stats = {}
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Weights sparsity after epoch %d:\n%s", epoch, sparsity_table(self.model, self.masks)[1])
        if self.args.masks_sparsity:
            log.info("Masks sparsity after epoch %d:\n%s", epoch, masks_sparsity_table(self.model, self.masks))
        self.best.step(self.model, self.masks, epoch, score, top5)
        for line in self.best.lines():
            log.info("%s", line)


def test_extras(args: argparse.Namespace, model: nn.Module, loader: Any, device: torch.device, run_dir: Any,
                num_classes: int) -> Dict[str, Any]:
    """After the test: the confusion matrix (--confusion) and the test phase's activation statistics, from one
    more pass over the test split; the summary's ``confusion`` entry."""
    wants_stats = "test" in args.activation_stats
    if not (args.confusion or wants_stats):
        return {}
    stats = ActivationStats(model, "test") if wants_stats else None
    matrix = confusion_pass(model, loader, device, num_classes, stats)
    if stats is not None:
        stats.write(run_dir.file("activation_stats"), None)
    if not args.confusion:
        return {}
    names = getattr(loader.dataset, "classes", None)
    log.info("==> Confusion (test split, the model's output):\n%s", confusion_table(matrix, names))
    return {"confusion": matrix.tolist()}


def run_activation_histograms(args: argparse.Namespace, model: nn.Module, loader: Any, device: torch.device,
                              run_dir: Any) -> int:
    """Distiller's --activation-histograms: histograms on the portion of the test split, then exit."""
    log.info("Collecting activation histograms on %.1f%% of the test split (%d images)",
             100 * args.activation_histograms, len(loader.dataset))
    paths = activation_histograms(model, loader, device, run_dir.path)
    log.info("Activation histograms written to %s", ", ".join(str(p) for p in paths))
    return 0
