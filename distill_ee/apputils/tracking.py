"""Experiment tracking of the sample app: TensorBoard (--tensorboard) and MLflow (--mlflow).

One small interface, ``Tracker``; each backend imports its package only when its flag is given. The app checks
the flags with ``check_tracking`` before anything is written, opens the trackers on rank 0 once the run directory
exists (``open_tracker``), logs each epoch's metrics.csv row (``log_epoch``) and, at the end, summary.json's
figures, the run's PNG figures and its files (``finish``). A tracker that fails in the middle of a run warns once
and is left out for the rest of it: the run itself goes on."""
from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..extras import require_installed
from .run_dir import RunDir

log = logging.getLogger("distill_ee")

#: --tensorboard's folder in the run directory, and --mlflow's store in the output root, when not given
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
#: the URI schemes --mlflow takes (a plain path is a local file store)
MLFLOW_SCHEMES = ("file", "sqlite", "http", "https")
#: MLflow takes at most this many parameters (and metrics) in one batch
_BATCH = 100
#: longest parameter value MLflow stores
_PARAM_CHARS = 6000


class Tracker:
    """Where a run's parameters, per-epoch scalars, images and files go; every method may raise."""

    def log_params(self, params: Dict[str, str]) -> None:
        """Record the run's parameters (name -> text)."""

    def log_scalars(self, scalars: Dict[str, float], step: int) -> None:
        """Record ``scalars`` (tag -> value) at ``step`` (the epoch)."""

    def log_image(self, path: Path) -> None:
        """Record the PNG file at ``path`` as an image."""

    def log_artifact(self, path: Path) -> None:
        """Keep a copy of the file at ``path``."""

    def close(self, failed: bool = False) -> None:
        """Write out what is pending and end the run (as failed when ``failed``)."""


class TensorBoardTracker(Tracker):
    """Event files for TensorBoard in ``log_dir`` (torch.utils.tensorboard's SummaryWriter)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.step = 0

    def log_params(self, params: Dict[str, str]) -> None:
        """One text entry per parameter, under ``params/``."""
        for name, value in params.items():
            self.writer.add_text(f"params/{name}", value, 0)

    def log_scalars(self, scalars: Dict[str, float], step: int) -> None:
        """One scalar per tag."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.step = step

    def log_image(self, path: Path) -> None:
        """The picture under ``figures/NAME``, at the last step logged."""
        import numpy as np
        from PIL import Image
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(f"figures/{path.stem}", pixels, self.step, dataformats="HWC")

    def log_artifact(self, path: Path) -> None:
        """Text files as text entries under ``files/`` (TensorBoard keeps no files)."""
        self.writer.add_text(f"files/{path.name}", "    " + path.read_text(encoding="utf-8").replace("\n", "\n    "),
                             self.step)

    def close(self, failed: bool = False) -> None:
        """Flush and close the event file."""
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run in experiment ``experiment`` of the store at ``uri``, named after the run directory."""

    def __init__(self, uri: str, experiment: str, run_name: str, artifact_root: Optional[str]) -> None:
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else \
            self.client.create_experiment(experiment, artifact_location=artifact_root)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_params(self, params: Dict[str, str]) -> None:
        """The parameters, in batches MLflow takes."""
        from mlflow.entities import Param
        items = [Param(k, v[:_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + _BATCH])

    def log_scalars(self, scalars: Dict[str, float], step: int) -> None:
        """The scalars as metrics at ``step``."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in scalars.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[start:start + _BATCH])

    def log_image(self, path: Path) -> None:
        """The picture in the run's ``figures/`` artifacts."""
        self.client.log_artifact(self.run_id, str(path), "figures")

    def log_artifact(self, path: Path) -> None:
        """The file in the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        """End the run, FINISHED or FAILED."""
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class Tracking(Tracker):
    """The trackers a run has, called in turn; one that raises warns once and is left out from then on."""

    def __init__(self, trackers: Sequence[Tuple[str, Tracker]]) -> None:
        self.trackers = list(trackers)
        self.closed = False

    def _each(self, act: str, *values: Any) -> None:
        for name, tracker in list(self.trackers):
            try:
                getattr(tracker, act)(*values)
            except Exception as exc:  # a tracker must not lose the run: whatever broke, go on without it
                log.warning("%s stopped logging (%s: %s); the run goes on without it", name, type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "")
                self.trackers.remove((name, tracker))

    def log_params(self, params: Dict[str, str]) -> None:
        """See Tracker."""
        self._each("log_params", params)

    def log_scalars(self, scalars: Dict[str, float], step: int) -> None:
        """See Tracker."""
        self._each("log_scalars", scalars, step)

    def log_image(self, path: Path) -> None:
        """See Tracker."""
        self._each("log_image", path)

    def log_artifact(self, path: Path) -> None:
        """See Tracker."""
        self._each("log_artifact", path)

    def close(self, failed: bool = False) -> None:
        """Close each tracker once."""
        if not self.closed:
            self.closed = True
            self._each("close", failed)


def add_tracking_flags(p: argparse.ArgumentParser) -> None:
    """--tensorboard, --mlflow and --mlflow-experiment."""
    g = p.add_argument_group("experiment tracking (docs/tracking.md)")
    g.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help=f"log each epoch's metrics, the final figures and the run's files for TensorBoard in DIR "
                        f"(default: {TENSORBOARD_DIR}/ in the run directory)")
    g.add_argument("--mlflow", nargs="?", const="", default=None, metavar="TRACKING_URI",
                   help=f"log the same to MLflow: a folder (a store there: mlflow.db and artifacts/), or a "
                        f"file:, sqlite:, http: or https: tracking URI (default: the folder {MLFLOW_DIR}/ in "
                        "-o/--out-dir)")
    g.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                   help="with --mlflow: the MLflow experiment (default: -n/--name, else the architecture)")


#: the flags whose runs neither train nor evaluate, so have nothing to track
_ALONE = (("--sense", lambda a: a.sense), ("--activation-histograms", lambda a: a.activation_histograms is not None),
          ("--summary", lambda a: a.summary), ("--thinnify", lambda a: a.thinnify),
          ("--export-onnx", lambda a: a.export_onnx is not None))


def check_tracking(args: argparse.Namespace) -> None:
    """The tracking flags: their packages installed, the TensorBoard folder writable, a URI MLflow can open here."""
    given = "--tensorboard" if args.tensorboard is not None else "--mlflow" if args.mlflow is not None else None
    alone = next((flag for flag, on in _ALONE if on(args)), None)
    if given and alone:
        raise ConfigError(f"{given} tracks a training or --evaluate run, and {alone} runs alone and exits: give "
                          "them in separate runs")
    if args.mlflow_experiment is not None and args.mlflow is None:
        raise ConfigError("--mlflow-experiment applies only with --mlflow")
    if args.mlflow_experiment is not None and not args.mlflow_experiment.strip():
        raise ConfigError("--mlflow-experiment: give a name")
    if args.tensorboard is not None:
        require_installed(["tensorboard"], "--tensorboard")
        if args.tensorboard:
            _check_writable("--tensorboard", Path(args.tensorboard))
    if args.mlflow is not None:
        _, local = mlflow_store(args.mlflow, args.out_dir)
        require_installed(["mlflow"], "--mlflow")
        if local is not None:
            _check_writable(f"--mlflow {args.mlflow}" if args.mlflow else "--mlflow", local)


def mlflow_store(given: str, out_dir: str) -> Tuple[str, Optional[Path]]:
    """--mlflow's tracking URI and, for a store on this machine, the folder it writes in."""
    if not given:
        return mlflow_store(str(Path(out_dir) / MLFLOW_DIR), out_dir)
    scheme, sep, rest = given.partition(":")
    if not sep or len(scheme) == 1:  # a plain path (a Windows drive letter included): a store in that folder
        folder = Path(given).absolute()
        return f"sqlite:///{folder / 'mlflow.db'}", folder
    scheme = scheme.lower()
    if scheme not in MLFLOW_SCHEMES:
        raise ConfigError(f"--mlflow {given}: MLflow tracking URI scheme {scheme!r} is not supported here; give a "
                          "local path or a file:, sqlite:, http: or https: URI")
    if scheme == "file":
        return given, Path(rest[2:] if rest.startswith("//") else rest)
    if scheme == "sqlite":
        path = rest[3:] if rest.startswith("///") else ""
        if not path:
            raise ConfigError(f"--mlflow {given}: give the database file as sqlite:///PATH (four slashes for an "
                              "absolute path)")
        return given, Path(path).parent
    return given, None


def _check_writable(flag: str, folder: Path) -> None:
    """``folder`` is a writable directory, or one can be made there (its nearest existing parent is one)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            raise ConfigError(f"{flag}: {existing} is a symbolic link to a missing folder")
        existing = existing.parent
    if not existing.exists():
        existing = Path.cwd()
    if not existing.is_dir():
        raise ConfigError(f"{flag}: cannot write to {folder}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write to {folder}: {existing} is not writable")


def open_tracker(args: argparse.Namespace, run_dir: RunDir) -> Optional[Tracking]:
    """The run's trackers (None without tracking flags), with the command and the git state logged."""
    trackers: List[Tuple[str, Tracker]] = []
    try:
        if args.tensorboard is not None:
            folder = Path(args.tensorboard) if args.tensorboard else run_dir.file(TENSORBOARD_DIR)
            trackers.append(("TensorBoard", TensorBoardTracker(folder)))
            log.info("TensorBoard logs in %s (open them with: tensorboard --logdir %s)", folder, folder)
        if args.mlflow is not None:
            uri, local = mlflow_store(args.mlflow, args.out_dir)
            artifacts = (local / "artifacts").absolute().as_uri() if local is not None and \
                uri.startswith("sqlite:") else None
            experiment = args.mlflow_experiment or args.name or args.arch
            trackers.append(("MLflow", MlflowTracker(uri, experiment, run_dir.path.name, artifacts)))
            log.info("MLflow run %s in experiment %r of %s%s", run_dir.path.name, experiment, uri,
                     f" (open it with: mlflow ui --backend-store-uri {uri})" if local is not None else "")
    except Exception as exc:  # the store itself refused (a server down, a database of another version ...)
        for _, tracker in trackers:
            tracker.close(failed=True)
        flag = "--mlflow" if trackers or args.tensorboard is None else "--tensorboard"
        raise ConfigError(f"{flag}: cannot start tracking: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not trackers:
        return None
    tracking = Tracking(trackers)
    atexit.register(tracking.close, True)  # a run stopped by an error still ends its trackers' runs
    tracking.log_params(run_params(args))
    return tracking


def run_params(args: argparse.Namespace) -> Dict[str, str]:
    """The command line, the git commit and dirty flag (in a git checkout) and every flag's value."""
    params = {"command": " ".join(getattr(args, "command", None) or sys.argv)}
    params.update(git_state(Path(__file__).resolve().parents[2]))
    params.update({f"flag.{k}": str(v) for k, v in sorted(vars(args).items()) if k != "command"})
    return params


def git_state(folder: Path) -> Dict[str, str]:
    """``git_commit`` and ``git_dirty`` of the git checkout whose top is ``folder``; empty when it is none (an
    installed package, even inside someone else's checkout) or git is missing."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=10)
        lines = top.stdout.split()
        if top.returncode or len(lines) != 2 or Path(lines[0]).resolve() != folder.resolve():
            return {}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": lines[1], "git_dirty": str(bool(status.stdout.strip())).lower()}


def log_epoch(tracking: Optional[Tracker], row: Dict[str, Any]) -> None:
    """metrics.csv's row of one epoch, its ``train_``/``valid_`` columns as ``train/...``/``valid/...``."""
    if tracking is not None:
        tracking.log_scalars({scalar_tag(k): v for k, v in _numbers(row)}, int(row["epoch"]))


def scalar_tag(column: str) -> str:
    """``train_exit1_top1`` -> ``train/exit1_top1``; other columns keep their names."""
    for phase in ("train_", "valid_"):
        if column.startswith(phase):
            return f"{phase[:-1]}/{column[len(phase):]}"
    return column


def finish(tracking: Optional[Tracker], run_dir: RunDir, summary: Dict[str, Any], step: int,
           files: Sequence[Path]) -> None:
    """summary.json's scalar figures and the calibration's, the run's PNG figures, and ``files``; then close."""
    if tracking is None:
        return
    scalars = {f"summary/{k}": v for k, v in _numbers(summary)}
    scalars.update({f"calibration/{k}": v for k, v in _flat(summary.get("calibration", {}))})
    tracking.log_scalars(scalars, step)
    for picture in sorted(run_dir.path.glob("*.png")):
        tracking.log_image(picture)
    for path in files:
        if path.is_file():
            tracking.log_artifact(path)
    tracking.close()


def _numbers(mapping: Dict[str, Any]) -> Iterator[Tuple[str, float]]:
    """The finite numbers (not booleans) among the top-level values."""
    for key, value in mapping.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch" and \
                math.isfinite(value):
            yield key, float(value)


def _flat(value: Any, prefix: str = "") -> Iterator[Tuple[str, float]]:
    """The finite numbers in nested mappings and lists, named by their path (``valid/taken_pct/exit1``)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        name = f"{prefix}{key}"
        if isinstance(item, (dict, list)):
            yield from _flat(item, f"{name}/")
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
            yield name, float(item)
