"""``distill-ee sweep``: trials as ordinary runs of the sample app, a study that survives a killed sweep and is
shared by several workers, the results table and plot, and ``--best``."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import yaml

from distill_ee.apputils.check import check
from distill_ee.apputils.cli import main

SCHEDULE = Path(__file__).resolve().parents[2] / "schedules" / "lenet_mnist.earlyexit.yaml"
#: a few seconds a trial on two cores: 2 epochs on 2% of the training split, no timing
FLAGS = "--epochs 2 --etrs 0.02 --evs 0.1 --etes 0.05 -b 64 --seed 0 --no-timing"
LW = "early_exits.branchy.exits.exit1.loss_weight"
FINAL = "early_exits.branchy.final_loss_weight"


def sweep_file(tmp_path: Path, trials: int = 6, objectives: str = "  top1: maximize\n  macs_expected: minimize\n",
               extra: str = "") -> Path:
    """A sweep over exit 1's loss weight, the final loss weight and --lr on B-LeNet."""
    path = tmp_path / "s.sweep.yaml"
    path.write_text(f"version: 1\nbase:\n  arch: lenet_mnist\n  schedule: {SCHEDULE}\n  flags: {FLAGS}\n"
                    f"space:\n  {LW}: [0.2, 0.5, 1.0]\n  {FINAL}: {{low: 0.3, high: 1.0}}\n"
                    f"  --lr: {{low: 0.01, high: 0.1, log: true}}\n"
                    f"objectives:\n{objectives}trials: {trials}\nseed: 0\nheartbeat_s: 1\n{extra}")
    return path


def sweep_command(path: Path, out: Path) -> list:
    return [sys.executable, "-m", "distill_ee", "sweep", str(path), "-o", str(out)]


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")


def prepared_study(tmp_path: Path, values: list) -> Path:
    """A finished study of the sweep file's space holding trials with ``values``, as a sweep leaves it."""
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}",
                                directions=["maximize", "minimize"][:len(values[0])])
    dists = {LW: optuna.distributions.CategoricalDistribution([0.2, 0.5, 1.0]),
             FINAL: optuna.distributions.FloatDistribution(0.3, 1.0),
             "--lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)}
    for k, v in enumerate(values):
        study.add_trial(optuna.create_trial(params={LW: [0.2, 0.5, 1.0][k % 3], FINAL: 0.3 + 0.1 * k,
                                                    "--lr": 0.01 * (k + 1)},
                                            distributions=dists, values=v))
    return out


def test_best_prints_the_first_pareto_trial_by_the_first_objective_and_says_so(tmp_path, capsys):
    out = prepared_study(tmp_path, [[60.0, 2.4e6], [70.0, 2.5e6], [50.0, 2.6e6]])
    assert main(["sweep", str(sweep_file(tmp_path)), "-o", str(out), "--best"]) == 0
    text = capsys.readouterr().out
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert head[0] == "# Best trial of sweep s: trial 1 (top1 70, macs_expected 2.5e+06)"
    assert head[1] == "# Several objectives: this is the first trial of the Pareto set (2 trials) by top1 (maximize)"
    assert head[2].startswith(f"# Flags: python compress_classifier.py {FLAGS} --lr 0.02 --arch lenet_mnist")
    data = yaml.safe_load(text)
    assert data["early_exits"]["branchy"]["exits"]["exit1"]["loss_weight"] == 0.5
    assert abs(data["early_exits"]["branchy"]["final_loss_weight"] - 0.4) < 1e-9
    best = tmp_path / "best.yaml"
    best.write_text(text)
    assert "valid for --arch lenet_mnist" in check(str(best), "lenet_mnist")  # ready to use


def test_best_with_one_objective_is_the_best_trial(tmp_path, capsys):
    out = prepared_study(tmp_path, [[60.0], [50.0], [65.0]])
    assert main(["sweep", str(sweep_file(tmp_path, objectives="  top1: maximize\n")), "-o", str(out),
                 "--best"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Best trial of sweep s: trial 2 (top1 65)\n# Flags:")


def test_best_before_any_sweep_is_one_line(tmp_path, capsys):
    assert main(["sweep", str(sweep_file(tmp_path)), "-o", str(tmp_path / "none"), "--best"]) == 2
    assert "no sweep in" in capsys.readouterr().err


def test_an_objective_not_in_summary_json_is_found_by_a_probe_run(tmp_path, capsys):
    out = tmp_path / "out"
    path = sweep_file(tmp_path, objectives="  top1: maximize\n  timing.1.speedup: maximize\n")
    assert main(["sweep", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert ":12: objectives['timing.1.speedup']: 'timing.1.speedup' is not a number in summary.json" in err
    assert "macs_expected" in err  # among the valid keys (--no-timing leaves the timing keys out)
    assert not (out / "trials").exists()


@pytest.mark.slow
def test_a_six_trial_sweep_writes_its_pareto_table_and_plot(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    done = subprocess.run(sweep_command(sweep_file(tmp_path), out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds = time.monotonic() - start
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == f"trial,{LW},{FINAL},--lr,top1,macs_expected,state,run_dir"
    assert len(rows) == 7 and all(",COMPLETE," in r for r in rows[1:])
    assert "Pareto front: " in (out / "results.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    for trial in load(out).trials:  # each trial an ordinary run directory
        run = Path(trial.user_attrs["run_dir"])
        assert run.name.startswith(f"trial_{trial.number}___") and (run / "metrics.csv").is_file()
    print(f"6 trials in {seconds:.0f} s")


def counted(study: optuna.Study) -> list:
    """The trials that count towards the trials wanted (a retried FAIL and a surplus one do not)."""
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in study.trials if not t.user_attrs.get("surplus") and t.number not in retried]


def params_of(trials: list) -> list:
    return [tuple(sorted(t.params.items())) for t in trials]


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_with_no_trial_lost_or_repeated(tmp_path):
    out, path = tmp_path / "out", sweep_file(tmp_path, trials=3)
    parent = subprocess.Popen(sweep_command(path, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "logs" / "trial_1.out").exists():  # trial 0 done, trial 1 running
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(parent.pid, signal.SIGKILL)
    parent.wait()
    killed = load(out).trials[1]
    assert killed.state == optuna.trial.TrialState.RUNNING  # as the dead worker left it
    done = subprocess.run(sweep_command(path, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = load(out)
    finished = counted(study)
    assert len(finished) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    assert study.trials[1].state == optuna.trial.TrialState.FAIL  # failed by its stale heartbeat ...
    assert killed.params in [t.params for t in finished]  # ... and retried with its values
    assert len(set(params_of(finished))) == 3  # none run twice
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(study.trials)


@pytest.mark.slow
def test_two_workers_on_one_sqlite_study_run_distinct_trials(tmp_path):
    out, path = tmp_path / "out", sweep_file(tmp_path, trials=4)
    out.mkdir()
    workers = [subprocess.Popen(sweep_command(path, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
    study = load(out)
    finished = counted(study)
    assert len(finished) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both worked ...
    assert len(set(params_of(finished))) == 4  # ... on distinct trials
    assert len({t.user_attrs["run_dir"] for t in finished}) == 4


@pytest.mark.parametrize("top1, pruned", [(12.0, True), (97.0, False)])
def test_a_trial_whose_validation_top1_trails_the_median_is_stopped_early(tmp_path, top1, pruned):
    from distill_ee.apputils.sweep_cli import _Objective
    from distill_ee.apputils.sweep_space import read_sweep

    sweep = read_sweep(sweep_file(tmp_path, objectives="  top1: maximize\n",
                                  extra="pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 0}\n"))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for k in range(3):
        study.add_trial(optuna.create_trial(value=95.0 + k, intermediate_values={0: 90.0 + k, 1: 95.0 + k}))
    out = tmp_path / "out"
    out.mkdir()
    objective = _Objective(sweep, out)
    trial = study.ask()
    run_dir = out / "trials" / f"trial_{trial.number}___x"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text(f"epoch,valid_top1\n0,{top1}\n")
    # the run: still training when its first epoch is read, unless it is good enough to be left to finish
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({60 if pruned else 1})"])
    if pruned:
        with pytest.raises(optuna.TrialPruned, match="pruned at epoch 0"):
            objective._follow(trial, proc, f"trial_{trial.number}")
        assert proc.poll() is None  # stopped on its first epoch, not after the run
        proc.kill()
    else:
        assert objective._follow(trial, proc, f"trial_{trial.number}") == run_dir
    proc.wait()
    assert study.trials[trial.number].intermediate_values == {0: top1}


RACE_ERRORS = {  # what the second of two workers started together on one database gets
    "schema version": lambda: sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {},
                                                            Exception("UNIQUE constraint failed")),
    "table": lambda: sqlalchemy.exc.OperationalError("CREATE TABLE studies", {},
                                                     Exception("table studies already exists")),
}


@pytest.mark.parametrize("race", sorted(RACE_ERRORS))
def test_a_worker_that_loses_the_race_to_create_the_storage_opens_it_again(tmp_path, monkeypatch, race):
    from distill_ee.apputils import sweep_cli
    from distill_ee.apputils.sweep_space import read_sweep

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RACE_ERRORS[race]()
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(sweep_cli.time, "sleep", lambda s: None)
    storage = sweep_cli.open_storage(read_sweep(sweep_file(tmp_path)), f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 2 and isinstance(storage, real)
    assert (tmp_path / "study.db.lock").is_file()  # workers on one machine open an SQLite file one at a time


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path):
    from distill_ee.apputils import sweep_cli
    from distill_ee.apputils.sweep_space import read_sweep
    from distill_ee.errors import DistillEEError
    with pytest.raises(DistillEEError, match=r"^--storage: cannot open 'nosuchdb://x'") as err:
        sweep_cli.open_storage(read_sweep(sweep_file(tmp_path)), "nosuchdb://x")
    assert "\n" not in str(err.value)
