"""compress_classifier.py end to end on the embedded data: outputs, determinism, resume, user errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill_ee.apputils.app import main
from .test_data import write_cifar

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml"
SUMMARY_KEYS = {"arch", "dataset", "top1", "top5", "top1_final_exit", "sparsity", "params_nnz", "macs_dense",
                "macs_expected", "exits"}
EXIT_KEYS = {"name", "threshold", "taken_pct", "top1_taken", "top1_if_all_exit_here", "macs"}


def run_app(out: Path, *extra: str) -> Path:
    args = ["--arch", "lenet_mnist", "--compress", str(SCHEDULE), "--epochs", "1", "-b", "128", "--lr", "0.02",
            "--seed", "3", "--deterministic", "--no-timing", "-o", str(out), "-n", "exp", "-p", "1000", *extra]
    assert main(args) == 0
    runs = sorted(out.glob("exp___*"))
    return runs[-1]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    return run_app(tmp_path_factory.mktemp("runs"))


@pytest.mark.slow
def test_a_run_writes_the_result_contract(first_run):
    names = {p.name for p in first_run.iterdir()}
    assert {"exp.log", SCHEDULE.name, "checkpoint.pth.tar", "best.pth.tar", "metrics.csv",
            "summary.json"} <= names
    summary = json.loads((first_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["arch"] == "lenet_mnist" and summary["dataset"] == "mnist5k"
    assert [e["name"] for e in summary["exits"]] == ["exit1", "final"]
    for row in summary["exits"]:
        assert EXIT_KEYS <= set(row)
    assert sum(e["taken_pct"] for e in summary["exits"]) == pytest.approx(100.0)
    assert summary["macs_expected"] <= summary["exits"][-1]["macs"]
    assert 0.0 <= summary["top1"] <= 100.0 and summary["top1"] > 50.0


@pytest.mark.slow
def test_metrics_csv_has_a_row_per_epoch_with_each_exits_training_figures(first_run):
    lines = (first_run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 2
    for column in ("epoch", "lr", "train_loss", "valid_top1", "train_exit1_loss", "train_exit1_top1", "sparsity"):
        assert column in header


@pytest.mark.slow
def test_deterministic_runs_give_the_same_summary(first_run, tmp_path):
    again = run_app(tmp_path)
    assert (again / "summary.json").read_text() == (first_run / "summary.json").read_text()


@pytest.mark.slow
def test_evaluate_a_checkpoint_rebuilds_the_exits_without_the_schedule(first_run, tmp_path):
    # checkpoint.pth.tar holds the final weights and the thresholds recalibrated after pruning
    args = ["--arch", "lenet_mnist", "--resume-from", str(first_run / "checkpoint.pth.tar"), "--evaluate",
            "--no-timing", "-o", str(tmp_path), "-n", "ev", "--seed", "3"]
    assert main(args) == 0
    summary = json.loads(next(tmp_path.glob("ev___*/summary.json")).read_text())
    original = json.loads((first_run / "summary.json").read_text())
    assert summary["exits"] == original["exits"]
    assert summary["top1"] == original["top1"]


@pytest.mark.parametrize("argv, message", [
    (["--arch", "lenet_mnis"], "unknown architecture 'lenet_mnis'; did you mean 'lenet_mnist'"),
    (["--dataset", "mnist5"], "unknown dataset 'mnist5'; did you mean 'mnist5k'"),
    (["--compress", "no/such/schedule.yaml"], "no/such/schedule.yaml: cannot be read (No such file or directory)"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys, tmp_path):
    assert main([*argv, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_refused(first_run, capsys, tmp_path):
    args = ["--arch", "simplenet_mnist", "--resume-from", str(first_run / "checkpoint.pth.tar"), "-o",
            str(tmp_path), "--epochs", "1"]
    assert main(args) == 2
    assert "checkpoint is for --arch 'lenet_mnist', not 'simplenet_mnist'" in capsys.readouterr().err


@pytest.mark.slow
def test_an_unwritable_out_dir_is_a_clear_error_without_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run([sys.executable, str(ROOT / "compress_classifier.py"), "-o", str(blocker / "sub")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "cannot create the output directory" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_calibrate_and_export_a_trained_checkpoint(first_run, tmp_path):
    import torch

    import distill_ee
    from distill_ee.apputils.models import create_model
    from distill_ee.deploy import MultiExitSession
    from distill_ee.early_exit.export import load_exported

    args = ["--arch", "lenet_mnist", "--resume-from", str(first_run / "best.pth.tar"), "--evaluate",
            "--ee-calibrate", "drop=1.0", "--ee-export", "--no-timing", "-o", str(tmp_path), "-n", "cal"]
    assert main(args) == 0
    run = next(tmp_path.glob("cal___*"))
    summary = json.loads((run / "summary.json").read_text())
    cal = summary["calibration"]
    assert cal["target"] == "drop=1" and cal["automatic"] is False
    assert cal["valid"]["drop"] <= 1.0
    assert summary["exits"][0]["threshold"] == pytest.approx(cal["thresholds"][0], rel=1e-5)
    assert {"tradeoff.csv", "tradeoff.png", "exit_fractions.png"} <= {p.name for p in run.iterdir()}
    assert summary["export"]["format"] == "onnx" and "onnx/manifest.json" in summary["export"]["files"]
    session = MultiExitSession(run / "onnx")
    assert session.thresholds[0] == pytest.approx(cal["thresholds"][0], rel=1e-5)
    x = torch.randn(64, 1, 28, 28)
    logits, exit_index = session(x.numpy())
    model = create_model("lenet_mnist", 10, 1)
    distill_ee.load_checkpoint(model, first_run / "best.pth.tar")
    exits = distill_ee.EarlyExits.of(model)
    exits.set_thresholds(session.thresholds)  # the calibrated ones (an --evaluate run saves no checkpoint)
    with torch.no_grad():
        want, want_index = exits.multi_exit_model().eval()(x)
    assert (exit_index == want_index.numpy()).all()
    assert abs(logits - want.numpy()).max() < 1e-4

    args[args.index("--ee-export") + 1:args.index("--ee-export") + 1] = ["torchscript"]
    args[-1] = "ts"
    assert main(args) == 0
    exported = load_exported(next(tmp_path.glob("ts___*")) / "torchscript")
    logits, exit_index = exported(torch.zeros(4, 1, 28, 28))
    assert logits.shape == (4, 10) and exit_index.shape == (4,)


@pytest.mark.slow
def test_latency_target_calibrates_on_the_measured_times_of_the_chosen_runtime(first_run, tmp_path):
    args = ["--arch", "lenet_mnist", "--resume-from", str(first_run / "best.pth.tar"), "--evaluate",
            "--ee-calibrate", "latency=0.9", "--ee-latency-runtime", "onnx", "--no-timing", "-o", str(tmp_path),
            "-n", "lat"]
    assert main(args) == 0
    summary = json.loads((next(tmp_path.glob("lat___*")) / "summary.json").read_text())
    latency = summary["calibration"]["latency"]
    assert latency["runtime"] == "onnxruntime" and latency["batch_size"] == 1
    assert len(latency["stages"]) == 2 and len(latency["branches"]) == 1 and latency["backbone"] > 0
    assert isinstance(latency["warnings"], list)
    assert summary["calibration"]["valid"]["macs_fraction"] <= 0.9  # a share of the measured time here


@pytest.mark.slow
def test_sensitivity_analysis_writes_csv_and_png(first_run, tmp_path):
    args = ["--arch", "lenet_mnist", "--resume-from", str(first_run / "best.pth.tar"), "--sense", "filter",
            "--sense-range", "0", "0.6", "0.3", "-o", str(tmp_path), "-n", "sense"]
    assert main(args) == 0
    run = next(tmp_path.glob("sense___*"))
    lines = (run / "sensitivity.csv").read_text().splitlines()
    assert lines[0] == "parameter,sparsity,top1,top5,loss"
    assert any(line.startswith("conv2.weight,0.3,") for line in lines)
    assert (run / "sensitivity.png").stat().st_size > 0


@pytest.mark.slow
def test_a_dense_checkpoint_fine_tunes_under_a_schedule_that_adds_exits(tmp_path):
    dense = ["--arch", "lenet_mnist", "--epochs", "1", "-b", "256", "--lr", "0.02", "--seed", "1", "--no-timing",
             "-o", str(tmp_path / "dense"), "-n", "dense"]
    assert main(dense) == 0
    ckpt = next((tmp_path / "dense").glob("dense___*/checkpoint.pth.tar"))
    tuned = ["--arch", "lenet_mnist", "--resume-from", str(ckpt), "--reset-optimizer", "--compress",
             str(SCHEDULE), "--epochs", "1", "-b", "256", "--seed", "1", "--no-timing", "--ee-no-recalibrate",
             "-o", str(tmp_path / "tuned"), "-n", "tuned"]
    assert main(tuned) == 0
    summary = json.loads(next((tmp_path / "tuned").glob("tuned___*/summary.json")).read_text())
    assert [e["name"] for e in summary["exits"]] == ["exit1", "final"]
    assert "calibration" not in summary


@pytest.mark.slow
def test_distillers_earlyexit_flags_attach_the_archs_default_exits(tmp_path, capsys):
    args = ["--arch", "lenet_mnist", "--earlyexit_thresholds", "0.5", "--earlyexit_lossweights", "0.3",
            "--epochs", "1", "-b", "256", "--no-timing", "-o", str(tmp_path), "-n", "flags"]
    assert main(args) == 0
    run = next(tmp_path.glob("flags___*"))
    summary = json.loads((run / "summary.json").read_text())
    assert [e["name"] for e in summary["exits"]] == ["exit1", "final"]
    assert summary["exits"][0]["threshold"] == 0.5
    assert "final_loss_weight: auto" in (run / "earlyexit_schedule.yaml").read_text()
    assert main(["--arch", "lenet_mnist", "--earlyexit_thresholds", "0.5", "0.2", "--earlyexit_lossweights",
                 "0.3", "-o", str(tmp_path)]) == 2
    assert "has 1 default exit(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_distillers_earlyexit_archs_take_its_one_exit_after_layer1_2_from_the_flags(tmp_path, capsys):
    write_cifar(tmp_path / "cifar", n=20)
    args = ["--arch", "resnet20_cifar_earlyexit", "--dataset", "cifar10", str(tmp_path / "cifar"),
            "--earlyexit_thresholds", "0.4", "--earlyexit_lossweights", "0.4", "--epochs", "1", "-b", "20",
            "--vs", "0.2", "--no-timing", "-o", str(tmp_path), "-n", "distiller"]
    assert main(args) == 0
    run = next(tmp_path.glob("distiller___*"))
    exits = yaml.safe_load((run / "earlyexit_schedule.yaml").read_text())["early_exits"]["exits"]["exits"]
    assert exits == {"exit1": {"attach": "layer1.2.relu2", "loss_weight": 0.4, "threshold": 0.4, "branch": [
        {"type": "avgpool", "kernel_size": 3}, "flatten", {"type": "linear"}]}}
    capsys.readouterr()
    assert main(["--arch", "resnet20_cifar_earlyexit", "--dataset", "cifar10", str(tmp_path / "cifar"),
                 "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--arch resnet20_cifar_earlyexit has 1 early exit(s), as in Distiller: give 1 value(s)" in err
    assert "\n" not in err and "or use --arch resnet20_cifar for the network without exits" in err


@pytest.mark.slow
def test_the_anytime_table_gives_every_classifiers_top1_and_macs(first_run):
    summary = json.loads((first_run / "summary.json").read_text())
    rows = summary["anytime"]
    assert [r["name"] for r in rows] == [e["name"] for e in summary["exits"]]
    for row, exit_row in zip(rows, summary["exits"]):
        assert row["top1"] == exit_row["top1_if_all_exit_here"] and row["macs"] == exit_row["macs"]
        assert row["macs_pct"] == pytest.approx(100.0 * exit_row["macs"] / summary["macs_dense"])
    assert (first_run / "anytime.png").stat().st_size > 0
