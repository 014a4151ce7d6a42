"""``distill-ee cascade``: checkpoints chained small to big from a YAML file, calibrated, measured, reported."""
import json

import pytest
import torch

from distill_ee.apputils.cli import main
from distill_ee.apputils.models import create_model
from distill_ee.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    torch.manual_seed(0)
    for arch in ("simplenet_v2_mnist", "lenet_mnist"):
        save_checkpoint(root / f"{arch}.pth.tar", create_model(arch, 10, 1), arch=arch)
    return root


def write(tmp_path, text):
    path = tmp_path / "cascade.yaml"
    path.write_text(text)
    return path


def config(root, rule="{kind: max_prob, threshold: 0.5}"):
    return (f"dataset: mnist5k\nmembers:\n  - name: little\n    checkpoint: {root}/simplenet_v2_*.pth.tar\n"
            f"    rule: {rule}\n  - name: big\n    checkpoint: {root}/lenet_mnist.pth.tar\n")


@pytest.mark.slow
def test_a_calibrated_cascade_reports_every_member_and_runs_for_real(checkpoints, tmp_path):
    path = write(tmp_path, config(checkpoints))
    assert main(["cascade", str(path), "--calibrate", "macs=0.99", "-o", str(tmp_path), "-n", "c"]) == 0
    run = next(tmp_path.glob("c___*"))
    summary = json.loads((run / "summary.json").read_text())
    names = [m["name"] for m in summary["members"]]
    assert names == ["little", "big"]
    assert summary["calibration"]["target"] == "macs=0.99"
    assert summary["calibration"]["valid"]["macs_fraction"] <= 0.99
    assert summary["test"]["real_equals_simulated"] is True
    assert sum(m["taken_pct"] for m in summary["members"]) == pytest.approx(100.0)
    assert all(m["seconds"] > 0 and m["macs"] > 0 for m in summary["members"])
    assert {"tradeoff.csv", "tradeoff.png"} <= {p.name for p in run.iterdir()}


@pytest.mark.slow
def test_an_idk_rule_is_fitted_and_thresholded_by_the_cost_aware_objective(checkpoints, tmp_path):
    path = write(tmp_path, config(checkpoints, "{kind: idk, beta: 0.3}"))
    assert main(["cascade", str(path), "-o", str(tmp_path), "-n", "idk"]) == 0
    summary = json.loads((next(tmp_path.glob("idk___*")) / "summary.json").read_text())
    assert summary["idk"]["beta"] == 0.3 and len(summary["idk"]["thresholds"]) == 1
    assert summary["members"][0]["threshold"] == summary["idk"]["thresholds"][0]


@pytest.mark.parametrize("edit, where", [
    (lambda t: t.replace("dataset:", "datset:"), ":1: datset: unknown key 'datset'"),
    (lambda t: t.replace("simplenet_v2_*", "nothing_*"), ":4: members[0].checkpoint: no file matches"),
    (lambda t: t.replace("max_prob", "max_probb"), ":5: members[0].rule.kind: unknown rule 'max_probb'"),
    (lambda t: t.replace("threshold: 0.5", "threshold: -1"), ":5: members[0].rule.threshold: must be a finite"),
    (lambda t: t + "    rule: {kind: margin}\n", ":8: members[1].rule: the last member answers every sample"),
    (lambda t: t.replace("name: big", "name: little"), ":6: members[1].name: two members are named 'little'"),
])
def test_a_malformed_cascade_file_is_one_located_line(checkpoints, tmp_path, capsys, edit, where):
    path = write(tmp_path, edit(config(checkpoints)))
    assert main(["cascade", str(path), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}{where}")
    assert not list(tmp_path.glob("cascade___*"))


def test_a_target_a_cascade_cannot_take_is_refused(checkpoints, tmp_path, capsys):
    path = write(tmp_path, config(checkpoints))
    assert main(["cascade", str(path), "--calibrate", "budget=0.5"]) == 2
    assert "--calibrate takes drop= or macs= for a cascade" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["-b", "0"], "-b/--batch-size must be at least 1, got 0"),
    (["--calibrate", "drop"], "calibration target 'drop': expected KIND=VALUE"),
])
def test_bad_flags_are_one_line(checkpoints, tmp_path, capsys, argv, message):
    path = write(tmp_path, config(checkpoints))
    assert main(["cascade", str(path), *argv, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
