"""``distill-ee plan-split``: a checkpoint's stages placed on tiers from a YAML file, ranked, written, simulated."""
import json

import pytest

from distill_ee.apputils.cli import main
from distill_ee.apputils.models import create_model
from distill_ee.checkpoint import save_checkpoint
from support import lenet_with_exit

TIERS = """tiers:
  - {name: device, speed: 0.25}
  - {name: edge, speed: 1.0}
links:
  - {bandwidth_mbps: 20, latency_ms: 10}
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pth.tar"
    save_checkpoint(path, lenet_with_exit(), arch="lenet_mnist", dataset="mnist5k")
    return path


@pytest.mark.slow
def test_placements_are_ranked_and_the_best_is_written_and_simulated(checkpoint, tmp_path):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(TIERS)
    assert main(["plan-split", str(checkpoint), str(tiers), "--simulate", "10", "-o", str(tmp_path)]) == 0
    run = next(tmp_path.glob("split___*"))
    summary = json.loads((run / "summary.json").read_text())
    placements = summary["placements"]
    assert len(placements) == 3 and placements[0]["owner"] == summary["recommended"]
    assert [p["latency"] for p in placements] == sorted(p["latency"] for p in placements)
    inputs = summary["inputs"]
    assert inputs["cut_bytes"] == [28 * 28 * 4, 20 * 12 * 12 * 4]  # the image, then pool1's output (float32)
    assert inputs["reach"][0] == 1.0 and 0 <= inputs["reach"][1] <= 1
    assert {"tiers/tier0_device.zip", "tiers/tier1_edge.zip", "tiers/placement.json"} <= set(summary["files"])
    assert summary["simulation"]["samples"] == 10 and summary["simulation"]["measured_mean"] > 0


@pytest.mark.parametrize("edit, where", [
    (lambda t: t.replace("speed: 0.25", "speed: -1"), ":2: tiers[0].speed: must be a finite number above 0"),
    (lambda t: t.replace("speed: 0.25", "sped: 0.25"), ":2: tiers[0].sped: unknown key 'sped'"),
    (lambda t: t.replace("latency_ms: 10", "latency_ms: nan"), ":5: links[0].latency_ms: must be a finite number"),
    (lambda t: t.replace("  - {bandwidth_mbps: 20, latency_ms: 10}\n", ""), ":4: links: 2 tiers need 1 links"),
    (lambda t: t.replace("name: edge", "name: device"), ":3: tiers[1].name: two tiers are named 'device'"),
    (lambda t: t + "extra: 1\n", ":6: extra: unknown key 'extra'"),
    (lambda t: t.replace("speed: 1.0", "profile: [1, 2]"), ":3: tiers[1].profile: a profile is {stages:"),
])
def test_a_malformed_tier_file_is_one_located_line(checkpoint, tmp_path, capsys, edit, where):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(edit(TIERS))
    assert main(["plan-split", str(checkpoint), str(tiers), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tiers}{where}"), err
    assert not list(tmp_path.glob("split___*"))


def test_a_model_without_exits_cannot_be_split(tmp_path, capsys):
    path = tmp_path / "plain.pth.tar"
    save_checkpoint(path, create_model("lenet_mnist", 10, 1), arch="lenet_mnist", dataset="mnist5k")
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(TIERS)
    assert main(["plan-split", str(path), str(tiers), "-o", str(tmp_path)]) == 2
    assert "the model has no early exits to split at" in capsys.readouterr().err


def test_a_simulation_size_out_of_range_is_refused(checkpoint, tmp_path, capsys):
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(TIERS)
    assert main(["plan-split", str(checkpoint), str(tiers), "--simulate", "-1", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --simulate takes 0 to 10000 images, got -1"
