"""The side-by-side benchmark's bookkeeping: trainings cached by the hash of what decides them, an interrupted
training resumed from its last checkpoint, rows cached per training, and the 95% interval of a top-1."""
import csv
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from distill_ee.apputils.app import main as app_main

from ..apputils.test_data import write_mnist

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("dynamic_inference", ROOT / "benchmarks" / "dynamic_inference.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["dynamic_inference"] = bench
spec.loader.exec_module(bench)


def tiny(tmp_path, epochs=2):
    data = tmp_path / "data"
    write_mnist(data / "FashionMNIST" / "raw", n_train=120, n_test=40)
    plan = bench.trainings(epochs, str(data))
    return replace(plan["lenet"], flags=("--lr", "0.01", "-b", "40", "--vs", "0.25"))


def test_the_key_is_the_hash_of_what_decides_the_result_and_nothing_else():
    base = bench.Training("a", "lenet_mnist", 3, schedule="x: 1\n", flags=("--lr", "0.1"), data="/one")
    assert base.key() == replace(base, name="b", data="/two").key()  # the name and the data's folder do not count
    for change in ({"arch": "resnet20_cifar"}, {"epochs": 4}, {"schedule": "x: 2\n"}, {"flags": ("--lr", "0.2")},
                   {"dataset": "mnist"}, {"seed": 1}):
        assert replace(base, **change).key() != base.key(), change


def test_a_schedules_lr_period_follows_the_epochs():
    text = bench.schedule_text(ROOT / "schedules" / "resnet20_mnist.earlyexit.yaml", 7)
    assert "T_max: 7" in text


@pytest.mark.slow
def test_a_second_run_reuses_the_training(tmp_path):
    training = tiny(tmp_path)
    calls = []

    def runner(args):
        calls.append(list(args))
        return app_main(list(args))

    first = bench.ensure_trained(training, tmp_path / "cache", runner)
    again = bench.ensure_trained(training, tmp_path / "cache", runner)
    assert len(calls) == 1 and not first.cached and again.cached
    assert again.summary == first.summary and again.checkpoint == first.checkpoint
    assert first.train_seconds > 0
    record = json.loads((tmp_path / "cache" / training.key() / "done.json").read_text())
    assert record["training"]["arch"] == "lenet_mnist"


@pytest.mark.slow
def test_an_interrupted_training_resumes_from_its_last_checkpoint(tmp_path):
    training = tiny(tmp_path, epochs=2)
    folder = tmp_path / "cache" / training.key()
    calls = []

    def interrupted(args):  # the first epoch ran, then the run stopped before writing done.json
        args = list(args)
        args[args.index("--epochs") + 1] = "1"
        return app_main(args)

    def runner(args):
        calls.append(list(args))
        return app_main(list(args))

    folder.mkdir(parents=True)
    (folder / "schedule.yaml").write_text(training.schedule)
    assert interrupted(training.command(folder / "runs", folder / "schedule.yaml", None)) == 0
    trained = bench.ensure_trained(training, tmp_path / "cache", runner)
    (args,) = calls
    assert "--resume-from" in args
    with open(bench.latest_run(folder / "runs") / "metrics.csv") as f:
        assert [float(r["epoch"]) for r in csv.DictReader(f)] == [1.0]  # only the epoch that was missing
    assert len(list((folder / "runs").iterdir())) == 2 and trained.summary["top1"] >= 0


def test_a_failed_training_stops_the_benchmark_without_a_record(tmp_path):
    training = tiny(tmp_path)
    with pytest.raises(SystemExit, match="training 'lenet' failed"):
        bench.ensure_trained(training, tmp_path / "cache", lambda args: 2)
    assert not (tmp_path / "cache" / training.key() / "done.json").exists()


def test_rows_are_cached_per_training_and_spec(tmp_path):
    training = bench.Training("a", "lenet_mnist", 1)
    computed = []

    def compute():
        computed.append(1)
        return {"top1": 90.0}

    spec = {"rule": "entropy", "target": "drop=0.5"}
    assert bench.cached_row(tmp_path, training, spec, compute) == {"top1": 90.0}
    assert bench.cached_row(tmp_path, training, spec, compute) == {"top1": 90.0}
    bench.cached_row(tmp_path, training, {**spec, "target": "drop=1"}, compute)
    bench.cached_row(tmp_path, replace(training, epochs=2), spec, compute)
    assert len(computed) == 3


def test_the_wilson_interval_of_a_top1_on_10000_images():
    low, high = bench.wilson(92.0, 10_000)
    assert low == pytest.approx(91.45, abs=0.01) and high == pytest.approx(92.51, abs=0.01)
    assert bench.wilson(100.0, 10_000)[1] == pytest.approx(100.0)
    assert 0.0 <= bench.wilson(0.0, 400)[0] < 1e-9
