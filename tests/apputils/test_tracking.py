"""--tensorboard and --mlflow: what a run logs (read back from the event files and the MLflow store), the flags'
bad input (one line, exit status 2, no run directory), and a tracker that breaks in the middle of a run."""
import json
import logging
from pathlib import Path

import pytest

from distill_ee.apputils.app import main
from extras_support import run_python
from distill_ee.apputils.tracking import MlflowTracker, TensorBoardTracker, Tracker, Tracking, mlflow_store

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml"
EPOCHS = 2
#: metrics.csv's columns as tags, one value per epoch (lenet_mnist's schedule has one early exit, exit1)
EPOCH_TAGS = ["train/loss", "train/top1", "train/exit1_loss", "train/exit1_top1", "valid/loss", "valid/top1",
              "sparsity", "lr", "valid/exit1_share", "valid/final_share", "valid/macs_expected"]
#: summary.json's figures and the calibration's, once at the end
FINAL_TAGS = ["summary/top1", "summary/macs_expected", "calibration/valid/top1", "calibration/test/macs_fraction"]
TINY = ["--epochs", str(EPOCHS), "-b", "128", "--lr", "0.02", "--seed", "3", "--no-timing", "-p", "1000",
        "--etrs", "0.05", "--evs", "0.2", "--etes", "0.2"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One small run with exits, tracked by TensorBoard and MLflow at their default places."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["--compress", str(SCHEDULE), *TINY, "-o", str(out), "-n", "exp", "--tensorboard", "--mlflow"]) == 0
    return out, next(out.glob("exp___*"))


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def mlflow_run(out: Path, experiment: str):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=mlflow_store("", str(out))[0])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_tensorboard_gets_each_epochs_metrics_row_in_the_run_directory(tracked):
    _, run_dir = tracked
    scalars = events(run_dir / "tensorboard")
    for tag in EPOCH_TAGS:
        assert [s.step for s in scalars.Scalars(tag)] == list(range(EPOCHS)), tag
    csv = (run_dir / "metrics.csv").read_text().splitlines()
    header, last = csv[0].split(","), csv[-1].split(",")
    assert scalars.Scalars("valid/top1")[-1].value == pytest.approx(float(last[header.index("valid_top1")]))
    assert "valid_exit1_share" in header  # a tracked run's metrics.csv has the exits' shares too


@pytest.mark.slow
def test_tensorboard_gets_the_final_figures_images_and_the_command(tracked):
    _, run_dir = tracked
    scalars = events(run_dir / "tensorboard")
    summary = json.loads((run_dir / "summary.json").read_text())
    for tag in FINAL_TAGS:
        assert len(scalars.Scalars(tag)) == 1, tag
    assert scalars.Scalars("summary/top1")[0].value == pytest.approx(summary["top1"], abs=1e-4)
    assert {"figures/tradeoff", "figures/exit_fractions", "figures/anytime"} <= set(scalars.Tags()["images"])
    texts = set(scalars.Tags()["tensors"])
    assert {"params/command/text_summary", "files/summary.json/text_summary",
            f"files/{SCHEDULE.name}/text_summary"} <= texts


@pytest.mark.slow
def test_mlflow_gets_the_metrics_per_epoch_the_command_and_the_files(tracked):
    out, run_dir = tracked
    client, run = mlflow_run(out, "exp")  # the experiment is the run's -n name
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    for tag in EPOCH_TAGS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, tag)] == list(range(EPOCHS)), tag
    for tag in FINAL_TAGS:
        assert tag in run.data.metrics
    command = run.data.params["command"]
    assert command.startswith("compress_classifier.py --compress") and "--mlflow" in command
    assert run.data.params["git_dirty"] in ("true", "false") and len(run.data.params["git_commit"]) == 40
    assert run.data.params["flag.epochs"] == str(EPOCHS)
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", SCHEDULE.name} <= files
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/tradeoff.png", "figures/anytime.png"} <= figures
    kept = Path(client.download_artifacts(run.info.run_id, "summary.json", str(out / "download")))
    assert kept.read_text() == (run_dir / "summary.json").read_text()


@pytest.mark.slow
def test_mlflow_experiment_names_the_experiment_and_a_folder_is_a_store_there(tmp_path):
    store = tmp_path / "store"
    argv = [*TINY, "--epochs", "1", "-o", str(tmp_path / "runs"), "--mlflow", str(store),
            "--mlflow-experiment", "sweep-a"]
    assert main(argv) == 0
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=mlflow_store(str(store), "")[0])
    run = client.search_runs([client.get_experiment_by_name("sweep-a").experiment_id])[0]
    assert run.data.metrics["valid/top1"] >= 0 and "valid/exit1_share" not in run.data.metrics  # no exits
    assert (store / "mlflow.db").is_file() and (store / "artifacts").is_dir()


def bad_input_cases(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    return [
        (["--tensorboard", str(blocker / "tb")],
         f"--tensorboard: cannot write to {blocker / 'tb'}: {blocker} is not a directory"),
        (["--mlflow", "ftp://host/mlruns"],
         "--mlflow ftp://host/mlruns: MLflow tracking URI scheme 'ftp' is not supported here; give a local path "
         "or a file:, sqlite:, http: or https: URI"),
        (["--mlflow", f"{blocker}/store"],
         f"--mlflow {blocker}/store: cannot write to {blocker}/store: {blocker} is not a directory"),
        (["--mlflow-experiment", "x"], "--mlflow-experiment applies only with --mlflow"),
        (["--tensorboard", "--sense", "filter"],
         "--tensorboard tracks a training or --evaluate run, and --sense runs alone and exits: give them in "
         "separate runs"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_bad_tracking_flags_are_one_line_and_status_2_before_any_output(case, tmp_path, capsys):
    argv, message = bad_input_cases(tmp_path)[case]
    assert main([*argv, "-o", str(tmp_path / "runs"), "--no-timing"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flag, package", [("--tensorboard", "tensorboard"), ("--mlflow", "mlflow")])
def test_a_tracking_flag_without_its_package_names_the_extra_before_any_output(flag, package, tmp_path):
    code = (f"from distill_ee.apputils.app import main\n"
            f"sys.exit(main(['{flag}', '-o', {str(tmp_path / 'runs')!r}, '--no-timing']))")
    out = run_python(code, package)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {flag} needs {package}, which is not installed (pip install distill-ee[tracking])"]
    assert not (tmp_path / "runs").exists()


class Broken(Tracker):
    """A tracker whose store went away after the run started."""

    def log_scalars(self, scalars, step):
        raise OSError("No space left on device")


def test_a_tracker_that_fails_mid_run_warns_once_and_the_others_go_on(tmp_path, caplog):
    tracking = Tracking([("MLflow", Broken()), ("TensorBoard", TensorBoardTracker(tmp_path / "tb"))])
    with caplog.at_level(logging.WARNING, logger="distill_ee"):
        for epoch in range(3):
            tracking.log_scalars({"valid/top1": 50.0 + epoch}, epoch)
        tracking.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["MLflow stopped logging (OSError: No space left on device); the run goes on without it"]
    assert [s.value for s in events(tmp_path / "tb").Scalars("valid/top1")] == [50.0, 51.0, 52.0]


@pytest.mark.slow
def test_a_run_whose_mlflow_store_fails_mid_run_still_writes_its_results(tmp_path, capsys, monkeypatch):
    def unreachable(self, scalars, step):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(MlflowTracker, "log_scalars", unreachable)
    argv = ["--compress", str(SCHEDULE), *TINY, "-o", str(tmp_path), "-n", "exp", "--tensorboard", "--mlflow"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("MLflow stopped logging (ConnectionError: the tracking server went away); the run goes on "
                     "without it") == 1
    run_dir = next(tmp_path.glob("exp___*"))
    assert (run_dir / "summary.json").is_file() and (run_dir / "checkpoint.pth.tar").is_file()
    assert len(events(run_dir / "tensorboard").Scalars("valid/top1")) == EPOCHS
