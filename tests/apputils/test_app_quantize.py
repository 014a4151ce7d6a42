"""--quantize-eval/--qe: Distiller's post-training quantization flags on a trained checkpoint, with exits."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_ee.apputils.app import main
from distill_ee.deploy import MultiExitSession
from distill_ee.quantization import load_stats

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = ["--arch", "lenet_mnist", "--compress", str(SCHEDULE), "--epochs", "2", "--lr", "0.02", "--seed", "0",
            "--deterministic", "--no-timing", "-o", str(out), "-n", "train"]
    assert main(args) == 0
    return next(out.glob("train___*"))


def evaluate(trained, tmp_path, *flags, name="q"):
    args = ["--arch", "lenet_mnist", "--resume-from", str(trained / "checkpoint.pth.tar"), "--evaluate",
            "--no-timing", "-o", str(tmp_path), "-n", name, "--qe", *flags]
    assert main(args) == 0
    run = next(tmp_path.glob(f"{name}___*"))
    return run, json.loads((run / "summary.json").read_text())


def test_quantized_evaluation_collects_statistics_recalibrates_exits_and_keeps_the_masks(trained, tmp_path):
    fp32 = json.loads((trained / "summary.json").read_text())
    run, summary = evaluate(trained, tmp_path, "--qe-mode", "asym_u", "--qe-per-channel", "--qe-calibration", "0.5",
                            "--ee-export")
    q = summary["quantization"]
    assert q["layers"] == 6  # conv1, conv2, fc1, fc2 and the exit branch's convolution and linear layer
    assert q["defaults"]["mode_weights"] == "ASYMMETRIC_UNSIGNED" and q["defaults"]["per_channel_wts"] is True
    stats = load_stats(run / "quantization_stats.yaml")
    assert {"conv1", "fc2", "early_exits.exit1.0"} <= set(stats)
    assert summary["calibration"]["automatic"] is True  # thresholds chosen again for the quantized model
    assert summary["sparsity"] == pytest.approx(fp32["sparsity"])  # pruned weights still zero
    assert abs(summary["top1_final_exit"] - fp32["top1_final_exit"]) <= 1.0
    session = MultiExitSession(run / "onnx_int8")
    assert session.manifest.raw["quantization"]["weights"] == "int8"
    # its thresholds were chosen with its own int8 logits: at most 0.5 points below its final exit on validation
    from distill_ee.apputils.datasets import load_dataset, make_loaders
    _, valid, _ = make_loaders(load_dataset("mnist5k"), 256)
    images = torch.cat([x for x, _ in valid]).numpy()
    labels = torch.cat([y for _, y in valid]).numpy()
    chosen, _ = session(images)
    final = session.simulate(images)[-1]
    assert (final.argmax(1) == labels).mean() - (chosen.argmax(1) == labels).mean() <= 0.005 + 1e-9
    logits, index = session(np.zeros((4, 1, 28, 28), np.float32))
    assert logits.shape == (4, 10) and index.shape == (4,)


def test_a_config_file_gives_the_quantizer_and_a_stats_file_the_ranges(trained, tmp_path):
    stats_run, _ = evaluate(trained, tmp_path, name="stats")
    config = tmp_path / "ptq.yaml"
    config.write_text("quantizers:\n  ptq:\n    class: PostTrainLinearQuantizer\n    bits_activations: 8\n"
                      "    bits_parameters: 4\n    mode: SYMMETRIC\n    overrides:\n      fc2: {bits_weights: 8}\n")
    _, summary = evaluate(trained, tmp_path, "--qe-config-file", str(config), "--qe-stats-file",
                          str(stats_run / "quantization_stats.yaml"), name="cfg")
    q = summary["quantization"]
    assert q["defaults"]["bits_weights"] == 4 and q["overrides"]["fc2"]["bits_weights"] == 8
    assert q["statistics"].endswith("quantization_stats.yaml")


@pytest.mark.parametrize("text, message", [
    ("quantizers:\n  ptq: {class: PostTrainLinearQuantizer, clip_acts: GAUS}\n",
     "ptq.yaml:2: quantizers.ptq.clip_acts: 'GAUS' is not a clip mode"),
    ("pruners:\n  p: {class: AutomatedGradualPruner}\n",
     "ptq.yaml:1: pruners: a quantization config holds only a quantizers: section"),
])
def test_a_bad_config_file_is_refused_before_anything_runs(trained, tmp_path, capsys, text, message):
    config = tmp_path / "ptq.yaml"
    config.write_text(text)
    args = ["--arch", "lenet_mnist", "--resume-from", str(trained / "checkpoint.pth.tar"), "--evaluate", "--qe",
            "--qe-config-file", str(config), "-o", str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


QAT = ROOT / "schedules" / "lenet_mnist.qat_exit.yaml"


def test_resuming_mid_qat_gives_the_uninterrupted_run(tmp_path):
    base = ["--arch", "lenet_mnist", "--compress", str(QAT), "--lr", "0.02", "--seed", "0", "--deterministic",
            "--no-timing", "-o", str(tmp_path)]
    assert main([*base, "--epochs", "2", "-n", "straight"]) == 0
    assert main([*base, "--epochs", "1", "-n", "first"]) == 0
    first = next(tmp_path.glob("first___*")) / "checkpoint.pth.tar"
    assert main([*base, "--epochs", "2", "--resume-from", str(first), "-n", "resumed"]) == 0
    straight = torch.load(next(tmp_path.glob("straight___*")) / "checkpoint.pth.tar", weights_only=True)
    resumed = torch.load(next(tmp_path.glob("resumed___*")) / "checkpoint.pth.tar", weights_only=True)
    a, b = straight["state_dict"], resumed["state_dict"]
    assert set(a) == set(b) and any(k.startswith("quantization.ranges.conv1.") for k in a)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
    assert a["quantization.ranges.conv1.steps"] > 0  # the ranges were tracked while training


def test_dynamic_activation_ranges(trained, tmp_path):
    _, summary = evaluate(trained, tmp_path, "--qe-dynamic", name="dyn")
    assert summary["quantization"]["defaults"]["dynamic"] is True


@pytest.mark.parametrize("mode, clip", [("sym_restr", "laplace"), ("sym", "gauss"), ("asym_s", "avg")])
def test_every_distiller_mode_and_clip_mode_quantizes_from_the_flags(trained, tmp_path, mode, clip):
    run, summary = evaluate(trained, tmp_path, "--qe-mode", mode, "--qe-clip-acts", clip, name=f"{mode}_{clip}")
    defaults = summary["quantization"]["defaults"]
    assert defaults["clip_acts"] == clip.upper() and defaults["mode_activations"] == {
        "sym": "SYMMETRIC", "sym_restr": "SYMMETRIC_RESTRICTED", "asym_s": "ASYMMETRIC_SIGNED"}[mode]
    assert "b" in load_stats(run / "quantization_stats.yaml")["conv1"]["output"]  # what LAPLACE reads
    assert summary["top1"] > 50.0


def test_laplace_clipping_with_a_stats_file_without_b_is_refused_before_anything_runs(trained, tmp_path, capsys):
    stats_run, _ = evaluate(trained, tmp_path, name="stats")
    old = tmp_path / "old_stats.yaml"
    stats = load_stats(stats_run / "quantization_stats.yaml")
    for entry in stats.values():
        for record in (entry["output"], *entry["inputs"].values()):
            record.pop("b")
    from distill_ee.quantization import save_stats
    save_stats(old, stats)
    args = ["--arch", "lenet_mnist", "--resume-from", str(trained / "checkpoint.pth.tar"), "--evaluate", "--qe",
            "--qe-clip-acts", "laplace", "--qe-stats-file", str(old), "-o", str(tmp_path / "runs")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no `b` (mean absolute deviation) for layer" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
