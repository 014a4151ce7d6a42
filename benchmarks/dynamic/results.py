"""The side-by-side benchmark's results file: every training's record and every row's figures, kept across runs.

A run records what it trained or found cached, and the rows it computed; the rows of trainings it did not run
stay as an earlier run wrote them, as long as the configuration they came from (the trainings' keys) is still
the plan's. The table, the claims and the docs are written from this file, so a benchmark that takes hours can
be completed over several runs (``--only``) on machines that do not share a cache.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from distill_ee.atomic import atomic_write_json

VERSION = 1
#: the checkout: paths inside it are recorded relative to it, so the file names no folder of one machine
ROOT = Path(__file__).resolve().parents[2]


class Results:
    """``benchmarks/results/dynamic_inference.json``: trainings by name, rows by their plan's label."""

    def __init__(self, path: Path):
        self.path = path
        data = json.loads(path.read_text()) if path.is_file() else {}
        if data.get("version") != VERSION:
            data = {"version": VERSION, "trainings": {}, "rows": {}}
        self.trainings: Dict[str, Dict[str, Any]] = data["trainings"]
        self.rows: Dict[str, Dict[str, Any]] = data["rows"]

    def record_training(self, name: str, key: str, summary: Mapping[str, Any], train_seconds: float,
                        measured: str, busy_share: float = 0.0) -> None:
        """What a training gave (its summary and training time, and by how much other work on the machine
        lengthened its epochs' summed time), under its configuration's key."""
        self.trainings[name] = {"key": key, "summary": portable(summary), "train_seconds": train_seconds,
                                "busy_share": busy_share, "measured": measured}

    def record_rows(self, label: str, keys: Mapping[str, str], lines: Sequence[Mapping[str, Any]],
                    measured: str) -> None:
        """The lines of one row plan, with the keys of every training they read."""
        self.rows[label] = {"keys": dict(keys), "lines": [dict(line) for line in lines], "measured": measured}

    def training(self, name: str, key: str) -> Optional[Dict[str, Any]]:
        """The record of training ``name`` when it was made from configuration ``key``."""
        record = self.trainings.get(name)
        return record if record is not None and record["key"] == key else None

    def lines(self, label: str, keys: Mapping[str, str]) -> Optional[List[Dict[str, Any]]]:
        """The lines of row plan ``label`` when they were computed from trainings with these ``keys``."""
        record = self.rows.get(label)
        return record["lines"] if record is not None and record["keys"] == dict(keys) else None

    def save(self) -> None:
        """Write the file (atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"version": VERSION, "trainings": self.trainings, "rows": self.rows})


def portable(value: Any) -> Any:
    """``value`` with every string that is a path inside the checkout made relative to it."""
    if isinstance(value, Mapping):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith(str(ROOT) + "/"):
        return value[len(str(ROOT)) + 1:]
    return value
