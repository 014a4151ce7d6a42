"""Sensitivity analysis files of the sample app: ``sensitivity.csv`` and ``sensitivity.png``, and the
``--sense-range`` levels."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import nn

from ..atomic import atomic_write_csv
from ..errors import ConfigError
from ..sensitivity import Sensitivities, TestFunc, perform_sensitivity_analysis

CSV_COLUMNS = ["parameter", "sparsity", "top1", "top5", "loss"]
CSV_NAME = "sensitivity.csv"
PNG_NAME = "sensitivity.png"


def sensitivity_levels(start: float, end: float, step: float) -> List[float]:
    """Sparsity levels ``start, start + step, ...`` below ``end`` (Distiller's ``--sense-range``)."""
    if step <= 0 or not 0.0 <= start < end <= 1.0:
        raise ConfigError(f"--sense-range needs 0 <= START < END <= 1 and STEP > 0, got {start} {end} {step}")
    return [round(float(v), 10) for v in np.arange(start, end, step)]


def sensitivities_to_csv(sensitivities: Sensitivities, path: Union[str, Path]) -> Path:
    """Write one row per (parameter, sparsity): ``parameter, sparsity, top1, top5, loss``."""
    rows = [[name, level, *metrics] for name, results in sensitivities.items() for level, metrics in results.items()]
    return atomic_write_csv(path, [list(CSV_COLUMNS), *rows])


def sensitivities_to_png(sensitivities: Sensitivities, path: Union[str, Path]) -> Path:
    """Plot top1 against sparsity, one line per parameter (matplotlib's Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(10, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, results) in enumerate(sensitivities.items()):
        style = ("-", "--", ":", "-.")[(i // 10) % 4]  # the default palette repeats after ten colours
        ax.plot(list(results), [m[0] for m in results.values()], marker="o", linestyle=style, label=name)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top1")
    ax.set_title("Pruning sensitivity")
    ax.grid(True, alpha=0.3)
    if sensitivities:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def run_sensitivity(model: nn.Module, params: Optional[Iterable[str]], sparsities: Sequence[float], group: str,
                    test_func: TestFunc, out_dir: Union[str, Path]) -> Tuple[Path, Path]:
    """Run the analysis and write ``sensitivity.csv`` and ``sensitivity.png`` into ``out_dir``."""
    sensitivities = perform_sensitivity_analysis(model, params, sparsities, test_func, group)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return sensitivities_to_csv(sensitivities, out_dir / CSV_NAME), sensitivities_to_png(sensitivities,
                                                                                         out_dir / PNG_NAME)
