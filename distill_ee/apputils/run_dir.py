"""The run directory of the sample app: log file, schedule copy, metrics.csv and summary.json."""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..atomic import atomic_write_csv, atomic_write_text
from ..errors import ConfigError

log = logging.getLogger("distill_ee")


class RunDir:
    """``OUT/NAME___YYYY.MM.DD-HHMMSS/`` with the run's outputs."""

    def __init__(self, out_dir: str, name: str):
        stamp = time.strftime("%Y.%m.%d-%H%M%S")
        self.name = name
        self.path = Path(out_dir) / f"{name}___{stamp}"
        try:
            self.path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            try:
                self.path = Path(tempfile.mkdtemp(prefix=f"{name}___{stamp}-", dir=out_dir))
            except OSError as exc:
                raise ConfigError(f"cannot create the output directory in {out_dir}: {exc.strerror}") from None
        except OSError as exc:
            raise ConfigError(f"cannot create the output directory {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise ConfigError(f"the output directory {self.path} is not writable")
        #: what the run's checkpoints record about the data the model trains on (input shape, class count)
        self.trained_on: Dict[str, Any] = {}
        self._metrics_fields: Optional[List[str]] = None
        self._metric_rows: List[Dict[str, Any]] = []

    @property
    def log_file(self) -> Path:
        """``NAME.log``."""
        return self.path / f"{self.name}.log"

    def file(self, name: str) -> Path:
        """A path inside the run directory."""
        return self.path / name

    def append_metrics(self, row: Dict[str, Any]) -> None:
        """Add one epoch's row to metrics.csv (columns grow as new metrics appear)."""
        self._metric_rows.append(row)
        fields: List[str] = []
        for r in self._metric_rows:
            fields.extend(k for k in r if k not in fields)
        lines = [fields] + [[_fmt(r.get(k, "")) for k in fields] for r in self._metric_rows]
        atomic_write_csv(self.path / "metrics.csv", lines, lineterminator="\n")

    def write_json(self, name: str, data: Dict[str, Any]) -> Path:
        """Write ``data`` as indented JSON, atomically."""
        path = self.path / name
        atomic_write_text(path, json.dumps(_rounded(data), indent=2, sort_keys=False) + "\n")
        return path


def _rounded(value: Any, digits: int = 6) -> Any:
    """Floats rounded (float32 noise such as 97.70000168 becomes 97.7), containers walked."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (it may be swapped after setup)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Recorder(logging.Handler):
    """Keeps the records logged before the run's log file exists, to write them into it then."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record``."""
        self.records.append(record)


def setup_logging(log_file: Optional[Path] = None, level: int = logging.INFO) -> None:
    """Log to the console and to ``log_file``; without a file yet, records are kept and written into the file
    given by the next call (the handlers of an earlier run are replaced)."""
    root = logging.getLogger("distill_ee")
    root.setLevel(level)
    early: List[logging.LogRecord] = []
    for handler in list(root.handlers):
        if isinstance(handler, _Recorder) and log_file is not None:
            early = handler.records
        root.removeHandler(handler)
        handler.close()
    console = _StderrHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file is None:
        root.addHandler(_Recorder())
        return
    fh = logging.FileHandler(log_file, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
    for record in early:
        fh.handle(record)
    root.addHandler(fh)
