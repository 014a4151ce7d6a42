"""``distill-ee sweep SWEEP.yaml``: hyperparameter and schedule sweeps on Optuna.

Each trial is the sample app run as a subprocess on the sweep's schedule with the trial's values substituted
(``DIR/schedules/trial_N.yaml``), writing an ordinary run directory ``DIR/trials/trial_N___...``. The study
lives in a database (SQLite in DIR by default; any URL with ``--storage``): a killed sweep resumes where it
stopped, and the same command started on several machines shares one study. A trial whose worker died (its
heartbeat stopped) is failed and retried with the same values; COMPLETE, PRUNED and FAIL trials that were not
retried count towards the trials wanted.
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..atomic import atomic_write_text
from ..errors import DistillEEError, MissingExtraError
from ..extras import require
from .args import OneLineErrorParser
from .sweep_space import Sweep, check_objectives, check_space, read_sweep, schedule_text, summary_value, \
    trial_argv

#: seconds between two looks at a running trial's metrics.csv
POLL_S = 0.5


class TrialError(Exception):
    """A trial's run that failed (the app's exit status and last line)."""


class Surplus(Exception):
    """A trial started by a worker after the others had already started the trials wanted."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``distill-ee sweep``."""
    p = OneLineErrorParser(prog="distill-ee sweep", description="Sweep schedule values and flags with Optuna.")
    p.add_argument("sweep", metavar="SWEEP", help="the sweep file (YAML)")
    p.add_argument("-o", "--out-dir", default=None, help="the sweep directory (default: sweeps/NAME)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the sweep directory)")
    p.add_argument("--trials", type=int, default=None, help="trials wanted in all (default: the file's)")
    p.add_argument("--best", action="store_true", help="print the best trial's schedule (flags as a header)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run (or resume, or join) the sweep; ``--best`` prints the winner; user errors are one line, status 2."""
    args = build_parser().parse_args(argv)
    try:
        optuna = require("optuna", "distill-ee sweep")
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # heartbeats, stale-trial failing and retries are marked experimental; they are the documented mechanism
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        sweep = read_sweep(args.sweep)
        if args.trials is not None:
            if args.trials < 1:
                raise DistillEEError(f"--trials must be at least 1, got {args.trials}")
            sweep.trials = args.trials
        out = Path(args.out_dir or Path("sweeps") / sweep.study_name)
        if args.best:
            from .sweep_report import best_text
            print(best_text(sweep, load_study(sweep, out, args.storage, create=False)), end="")
            return 0
        run_sweep(sweep, out, args.storage)
    except KeyboardInterrupt:
        print("interrupted: the same command resumes the sweep", file=sys.stderr)
        return 130
    except DistillEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_sweep(sweep: Sweep, out: Path, storage: Optional[str]) -> None:
    """Check the space, then run trials until the study holds the trials wanted; write the results."""
    import optuna
    from .sweep_report import write_results
    out.mkdir(parents=True, exist_ok=True)
    check_space(sweep, out)
    study = load_study(sweep, out, storage, create=True)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        check_objectives(sweep, probe_summary(sweep, out))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = _Objective(sweep, out)
    while True:
        optuna.storages.fail_stale_trials(study)
        finished, running, waiting = tally(study.get_trials(deepcopy=False))
        if waiting or finished + running < sweep.trials:
            study.optimize(objective, n_trials=1, catch=(TrialError, Surplus))
        elif running:
            time.sleep(min(POLL_S * 4, sweep.heartbeat_s))
        else:
            break
    print(write_results(sweep, study, out))


def load_study(sweep: Sweep, out: Path, storage: Optional[str], create: bool) -> Any:
    """The study of the sweep in ``storage`` (default ``out/study.db``), with heartbeats and retries."""
    import optuna
    url = storage or f"sqlite:///{out / 'study.db'}"
    if not storage and not create and not (out / "study.db").is_file():
        raise DistillEEError(f"{sweep.file}: no sweep in {out} (no study.db); run the sweep first or give -o DIR "
                             "or --storage URL")
    rdb = open_storage(sweep, url)
    if not create:
        try:
            return optuna.load_study(study_name=sweep.study_name, storage=rdb)
        except KeyError:
            raise DistillEEError(f"{sweep.file}: no study {sweep.study_name!r} in the storage") from None
    pruner = optuna.pruners.NopPruner()
    if sweep.pruner is not None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner.n_startup_trials,
                                             n_warmup_steps=sweep.pruner.n_warmup_steps,
                                             interval_steps=sweep.pruner.interval_steps)
    return optuna.create_study(study_name=sweep.study_name, storage=rdb, load_if_exists=True,
                               directions=sweep.directions, sampler=make_sampler(sweep), pruner=pruner)


def open_storage(sweep: Sweep, url: str, attempts: int = 5) -> Any:
    """Optuna's RDBStorage at ``url``. Workers started together race to create its tables: on one machine an
    SQLite file is opened under a lock beside it; elsewhere the loser (a clash on a table or on Optuna's schema
    version) opens again once the winner's tables stand."""
    path = sqlite_file(url)
    if path is None or not path.parent.is_dir():
        return _open_retrying(sweep, url, attempts)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _open_retrying(sweep, url, attempts)


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of an ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and len(url) > len(prefix) else None


def _open_retrying(sweep: Sweep, url: str, attempts: int) -> Any:
    import optuna
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    attempt = 1
    while True:
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=sweep.heartbeat_s, grace_period=3 * sweep.heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        except Exception as exc:  # noqa: BLE001  (SQLAlchemy's errors for a bad URL are many types)
            raced = type(exc).__name__ == "IntegrityError" or "already exists" in str(exc)
            if not raced or attempt == attempts:
                raise DistillEEError(f"--storage: cannot open {url!r}: {str(exc).splitlines()[0]}") from None
        time.sleep(0.5 * attempt)
        attempt += 1


def make_sampler(sweep: Sweep) -> Any:
    """TPE for one objective, NSGA-II for several; seeded per trial number from the file's seed, so a worker
    that resumes or joins draws what a single worker would have drawn for that trial."""
    import optuna
    base = optuna.samplers.TPESampler if len(sweep.objectives) == 1 else optuna.samplers.NSGAIISampler
    seed = sweep.seed

    class PerTrialSeed(base):  # type: ignore[misc, valid-type]
        """The sampler, its random draws seeded from the trial's number."""

        def before_trial(self, study: Any, trial: Any) -> None:
            """Reseed from the trial's number, then Optuna's own preparation."""
            if seed is not None:  # Optuna has no public reseed-with-value; its RNGs are a RandomState each
                for rng in (getattr(self, "_rng", None), getattr(getattr(self, "_random_sampler", None), "_rng",
                                                                  None)):
                    if rng is not None:
                        rng.rng.seed((seed * 1_000_003 + trial.number) % 2 ** 32)
            super().before_trial(study, trial)

    return PerTrialSeed(seed=seed)


def tally(trials: List[Any]) -> Tuple[int, int, int]:
    """(finished, running, waiting) trials that count: COMPLETE, PRUNED and FAIL neither retried nor surplus."""
    import optuna
    state = optuna.trial.TrialState
    retried = retried_numbers(trials)
    finished = sum(1 for t in trials if counts(t, retried) and t.state.is_finished())
    running = sum(1 for t in trials if t.state == state.RUNNING and not t.user_attrs.get("surplus"))
    waiting = sum(1 for t in trials if t.state == state.WAITING)
    return finished, running, waiting


def retried_numbers(trials: List[Any]) -> set:
    """The numbers of the failed trials that a later trial retries (Optuna's retry history)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def counts(trial: Any, retried: set) -> bool:
    """Whether ``trial`` takes one of the trials wanted."""
    import optuna
    if trial.user_attrs.get("surplus"):
        return False
    return not (trial.state == optuna.trial.TrialState.FAIL and trial.number in retried)


def probe_summary(sweep: Sweep, out: Path) -> Dict[str, Any]:
    """summary.json of the base command run with ``--epochs 0`` (what keys the objectives may name)."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".probe-") as tmp:
        argv = [*trial_argv(sweep, {}, str(sweep.schedule)), "--epochs", "0", "-o", tmp, "-n", "probe"]
        done = subprocess.run([sys.executable, "-m", "distill_ee", *argv], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise sweep.error(("base",), f"the base command fails (exit status {done.returncode}): {last}")
        found = sorted(Path(tmp).glob("probe___*/summary.json"))
        return json.loads(found[0].read_text()) if found else {}


class _Objective:
    """Optuna's objective: run one trial's subprocess, report its epochs, return its summary's objectives."""

    def __init__(self, sweep: Sweep, out: Path):
        self.sweep = sweep
        self.out = out
        for sub in ("trials", "schedules", "logs"):
            (out / sub).mkdir(exist_ok=True)

    def __call__(self, trial: Any) -> Any:
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)
            raise Surplus(f"trial {trial.number}: the trials wanted are all started")
        values = {p.key: suggest(trial, p) for p in self.sweep.params}
        try:
            summary = self._earlier_result(trial) or self._run(trial, values)
        except KeyboardInterrupt:
            _retry_later(trial)
            raise
        return self._values(summary)

    def _surplus(self, trial: Any) -> bool:
        """Whether the trials that count, in number order, fill the trials wanted before this one."""
        trials = trial.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        before = [t for t in trials if t.number < trial.number and counts(t, retried)]
        return len(before) >= self.sweep.trials

    def _earlier_result(self, trial: Any) -> Optional[Dict[str, Any]]:
        """A retried trial whose first run finished (its worker died before recording it): that run's summary."""
        trials = trial.study.get_trials(deepcopy=False)
        history = trials[trial.number].system_attrs.get("retry_history", [])
        if not history:
            return None
        first = trials[history[-1]]
        summary = Path(first.user_attrs.get("run_dir", "")) / "summary.json"
        if first.user_attrs.get("run_dir") and summary.is_file():
            trial.set_user_attr("run_dir", first.user_attrs["run_dir"])
            trial.set_user_attr("schedule", first.user_attrs.get("schedule", ""))
            return json.loads(summary.read_text())
        return None

    def _run(self, trial: Any, values: Dict[str, Any]) -> Dict[str, Any]:
        import optuna
        name = f"trial_{trial.number}"
        schedule = self.out / "schedules" / f"{name}.yaml"
        header = f"# {self.sweep.study_name} trial {trial.number}: {json.dumps(values)}\n"
        atomic_write_text(schedule, schedule_text(self.sweep, values, header))
        trial.set_user_attr("schedule", str(schedule))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        argv = [*trial_argv(self.sweep, values, str(schedule)), "-o", str(self.out / "trials"), "-n", name]
        log_path = self.out / "logs" / f"{name}.out"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "distill_ee", *argv], stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            run_dir = self._follow(trial, proc, name)
        except optuna.TrialPruned:
            proc.kill()
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if proc.returncode != 0 or run_dir is None or not (run_dir / "summary.json").is_file():
            lines = log_path.read_text(errors="replace").strip().splitlines() or ["no output"]
            raise TrialError(f"trial {trial.number}: the run failed (exit status {proc.returncode}): {lines[-1]}")
        return json.loads((run_dir / "summary.json").read_text())

    def _follow(self, trial: Any, proc: subprocess.Popen, name: str) -> Optional[Path]:
        """Poll the run's metrics.csv while it runs; report valid top-1 per epoch and prune when told."""
        import optuna
        run_dir: Optional[Path] = None
        reported = 0
        while True:
            finished = proc.poll() is not None
            if run_dir is None:
                found = sorted((self.out / "trials").glob(f"{name}___*"))
                if found:
                    run_dir = found[-1]
                    trial.set_user_attr("run_dir", str(run_dir))
            if run_dir is not None and self.sweep.pruner is not None:
                for epoch, top1 in read_valid_top1(run_dir / "metrics.csv")[reported:]:
                    trial.report(top1, epoch)
                    reported += 1
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"trial {trial.number} pruned at epoch {epoch}")
            if finished:
                return run_dir
            time.sleep(POLL_S)

    def _values(self, summary: Dict[str, Any]) -> Any:
        values = []
        for objective in self.sweep.objectives:
            try:
                values.append(float(summary_value(summary, objective.key)))
            except (KeyError, TypeError, ValueError):
                raise TrialError(f"summary.json has no number at {objective.key!r}") from None
        return values[0] if len(values) == 1 else values


def _retry_later(trial: Any) -> None:
    """Queue an interrupted trial's values again, as a dead worker's trial is, so the next run does it."""
    import optuna
    frozen = trial.study.get_trials(deepcopy=False)[trial.number]
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(trial.study, frozen)


def suggest(trial: Any, param: Any) -> Any:
    """The trial's value of ``param`` (Optuna's suggest_* for its kind)."""
    if param.choices is not None:
        return trial.suggest_categorical(param.key, param.choices)
    if param.integer:
        return trial.suggest_int(param.key, int(param.low), int(param.high), step=int(param.step or 1),
                                 log=param.log)
    return trial.suggest_float(param.key, float(param.low), float(param.high), step=param.step, log=param.log)


def read_valid_top1(path: Path) -> List[Tuple[int, float]]:
    """(epoch, valid_top1) of each complete row of a run's metrics.csv (written atomically: never half a row)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    out = []
    for row in rows:
        try:
            out.append((int(row["epoch"]), float(row["valid_top1"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the sweep process dies (Linux), so no orphan trial runs on."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
