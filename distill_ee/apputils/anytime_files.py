"""Anytime prediction: every classifier's test top-1 against the MACs of reaching it, as a table and a curve."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

from tabulate import tabulate

from .tradeoff_files import figure

log = logging.getLogger("distill_ee")


def anytime_rows(exit_rows: List[Dict[str, Any]], backbone_macs: int) -> List[Dict[str, Any]]:
    """One row per classifier (exits in depth order, the final one last): its MACs and its test top-1 when
    every sample stops there (MSDNet's anytime prediction)."""
    return [{"name": r["name"], "macs": r["macs"], "macs_pct": 100.0 * r["macs"] / max(backbone_macs, 1),
             "top1": r["top1_if_all_exit_here"]} for r in exit_rows]


def write_anytime(rows: List[Dict[str, Any]], out_dir: str) -> str:
    """Log the table and draw ``anytime.png``; returns the picture's path."""
    log.info("Anytime prediction on the test split (every sample stopping at one classifier):\n%s",
             tabulate([[r["name"], r["macs"], f"{r['macs_pct']:.1f}", f"{r['top1']:.2f}"] for r in rows],
                      headers=["classifier", "MACs (branches on the way included)", "% of backbone", "top1"],
                      tablefmt="psql"))
    fig, (ax,) = figure(5.0, 3.6)
    ax.plot([r["macs_pct"] for r in rows], [r["top1"] for r in rows], "o-", color="tab:blue")
    for r in rows:
        ax.annotate(r["name"], (r["macs_pct"], r["top1"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("MACs per sample (% of the backbone)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Anytime prediction")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = str(Path(out_dir) / "anytime.png")
    fig.savefig(path)
    return path
