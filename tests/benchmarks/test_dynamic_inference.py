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


def write_epochs(run, seconds):
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "seconds"])
        writer.writeheader()
        writer.writerows({"epoch": i, "seconds": s} for i, s in enumerate(seconds))


def test_training_time_is_the_median_epoch_times_the_epochs_so_a_busy_epoch_does_not_count_in_full(tmp_path):
    runs = tmp_path / "runs"
    write_epochs(runs / "a", [10.0, 11.0, 400.0])  # interrupted after 3 epochs, one of them slowed by other work
    write_epochs(runs / "b", [12.0, 10.0])  # resumed for the last two
    assert bench.epoch_seconds(runs) == [10.0, 11.0, 400.0, 12.0, 10.0]
    assert bench.train_seconds(runs) == 11.0 * 5
    assert bench.busy_share(runs) == pytest.approx(443.0 / 55.0 - 1.0)
    quiet = tmp_path / "quiet"
    write_epochs(quiet / "a", [10.0, 12.0])
    assert bench.train_seconds(quiet) == 22.0 and bench.busy_share(quiet) == 0.0


def test_a_busy_training_is_marked_in_its_row():
    calm, busy = line("x", 90.0, 50.0), replace(line("x", 90.0, 50.0), busy=0.5)
    assert bench.cells(calm)["training"] == "1.0 min"
    assert bench.cells(busy)["training"] == f"1.0 min{bench.BUSY_MARK}" and bench.BUSY_MARK.strip() in bench.TIME_NOTE


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


def test_the_fashion_mnist_schedules_keep_their_own_epochs_and_the_others_follow_the_flag():
    plan = bench.trainings(6, None)
    assert plan["skipnet"].epochs == bench.header_epochs(ROOT / "schedules" / "resnet20_fmnist.skipnet.yaml") == 10
    assert plan["gates"].epochs == 6 and "T_max: 6" in plan["gates"].schedule
    assert all(t.flags[t.flags.index("-b") + 1] == "128" for t in plan.values())


def test_the_ready_schedules_header_command_is_the_benchmarks_own(tmp_path):
    for name, schedule in bench.READY.items():
        header = (ROOT / "schedules" / schedule).read_text()
        command = bench.trainings(10, None)[name].command(tmp_path, tmp_path / "s.yaml", None)
        for flag in ("--dataset", "--arch", "--epochs", "--vs", "--seed", "--lr", "-b"):
            assert f"{flag} {command[command.index(flag) + 1]}" in header, (schedule, flag)
        assert bench.BEGIN in header and bench.END in header


def points(*pairs):
    from types import SimpleNamespace
    return [SimpleNamespace(top1=t, macs_fraction=m) for t, m in pairs]


def test_a_target_chooses_the_cheapest_point_within_a_drop_and_the_most_accurate_within_a_macs_share():
    candidates = points((90.0, 0.2), (91.5, 0.4), (92.0, 0.6), (92.1, 1.0))
    drop = bench.parse_target_value("drop=0.5")
    assert bench.choose_point(candidates, lambda p: p, 92.1, drop) is candidates[2]
    macs = bench.parse_target_value("macs=0.5")
    assert bench.choose_point(candidates, lambda p: p, 92.1, macs) is candidates[1]
    none_cheap = bench.parse_target_value("macs=0.1")
    assert bench.choose_point(candidates, lambda p: p, 92.1, none_cheap) is candidates[0]


def line(method, top1, macs, training="t", note=""):
    return bench.Line(method, "resnet20_cifar", {"top1": top1, "macs_pct": macs, "test_images": 10_000,
                                                  "note": note}, 60.0, training=training)


def test_a_header_result_is_replaced_between_its_markers_and_only_there(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"# head\n{bench.BEGIN} (generated)\n# old result\n{bench.END}\nversion: 1\n")
    record = {"summary": {"top1": 91.0, "params_nnz": 1234}, "train_seconds": 120.0, "measured": "here"}
    bench.write_header(path, "t", record, [line("x, drop=0.5", 90.5, 40.0, note="n"),
                                           line("other", 1.0, 1.0, training="u")])
    text = path.read_text()
    assert "old result" not in text and text.startswith("# head\n") and text.endswith(f"{bench.END}\nversion: 1\n")
    assert "91.00%" in text and "x, drop=0.5: top-1 90.50" in text and "other" not in text
    assert all(len(l) <= 116 for l in text.splitlines())


def test_the_docs_table_and_claims_are_replaced_between_their_markers(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("intro\n<!-- TABLE-BEGIN (generated) -->\nold\n<!-- TABLE-END -->\nmid\n"
                    "<!-- CLAIMS-BEGIN (generated) -->\n<!-- CLAIMS-END -->\nend\n")
    bench.write_docs(path, "| new table |", "| new claims |")
    bench.write_docs(path, "| new table |", "| new claims |")  # idempotent
    assert path.read_text() == ("intro\n<!-- TABLE-BEGIN (generated) -->\n| new table |\n<!-- TABLE-END -->\nmid\n"
                                "<!-- CLAIMS-BEGIN (generated) -->\n| new claims |\n<!-- CLAIMS-END -->\nend\n")


def test_rows_of_a_training_not_yet_cached_are_left_out():
    trained = {"resnet20_exits": None, "lenet": None}
    kept = [p for p in bench.row_plans() if p.training in trained and all(n in trained for n in p.needs)]
    assert kept and all(p.training == "resnet20_exits" for p in kept)
    assert not any(p.training == "pipeline" for p in kept)


def test_a_teacher_counts_by_its_own_key_and_is_trained_first(tmp_path):
    student = bench.trainings(3, None)["lenet_kd"]
    assert student.teacher is not None and student.teacher.name == "resnet20"
    assert student.key() != bench.trainings(3, None)["lenet"].key()
    assert replace(student, teacher=replace(student.teacher, epochs=4)).key() != student.key()
    assert replace(student, teacher=replace(student.teacher, data="/elsewhere")).key() == student.key()
    with pytest.raises(ValueError, match="teacher"):
        student.command(tmp_path, None, None)
    args = student.command(tmp_path, None, None, teacher=tmp_path / "t.pth")
    assert args[args.index("--kd-teacher") + 1] == "resnet20_cifar" and args[-1] == str(tmp_path / "t.pth")

    ran = []

    def runner(args):
        ran.append(args)
        out = Path(args[args.index("-o") + 1]) / "run"
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"top1": 1.0}))
        (out / "checkpoint.pth.tar").write_text("x")
        return 0

    small = replace(student, teacher=replace(student.teacher, epochs=1))
    bench.ensure_trained(small, tmp_path / "cache", runner)
    assert [a[a.index("--arch") + 1] for a in ran] == ["resnet20_cifar", "lenet_mnist"]
    assert ran[1][ran[1].index("--kd-resume") + 1].endswith("checkpoint.pth.tar")


def test_the_results_file_keeps_rows_across_runs_while_their_trainings_keys_hold(tmp_path):
    plan = bench.trainings(3, None)
    results = bench.Results(tmp_path / "r.json")
    for name in ("lenet", "resnet20"):
        summary = {"top1": 90.0, "classes": [{"images": 10000}]}
        results.record_training(name, plan[name].key(), summary, 60.0, "machine A")
    kd = next(p for p in bench.row_plans() if p.training == "lenet_kd")
    results.record_rows(kd.label, bench.plan_keys(plan, kd),
                        [vars(line("taught", 91.0, 100.0, training="lenet_kd"))], "machine A")
    results.save()

    again = bench.Results(tmp_path / "r.json")  # a later run, which trained nothing
    lines, missing = bench.table_lines(plan, again)
    assert [l.method for l in lines] == ["backbone alone (lenet_mnist)", "backbone alone (resnet20_cifar)", "taught"]
    assert "knowledge distillation" not in missing and "SkipNet" in missing

    changed = bench.trainings(4, None)  # other epochs: every stored figure is stale
    lines, missing = bench.table_lines(changed, again)
    assert lines == [] and "knowledge distillation" in missing


def test_only_names_known_trainings_in_one_line_with_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--only", "lenet,resnett20", "--cache", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1
    assert "unknown training(s) resnett20; known: lenet, resnet20" in err
    assert not any(tmp_path.iterdir())  # nothing trained or written


def test_the_results_file_records_paths_inside_the_checkout_relative_to_it():
    from benchmarks.dynamic.results import ROOT, portable
    summary = {"kd": {"teacher_checkpoint": str(ROOT / ".bench_cache" / "t.pth.tar")}, "runs": [str(ROOT / "a")],
               "elsewhere": "/data/fashion", "top1": 91.5}
    assert portable(summary) == {"kd": {"teacher_checkpoint": ".bench_cache/t.pth.tar"}, "runs": ["a"],
                                 "elsewhere": "/data/fashion", "top1": 91.5}
