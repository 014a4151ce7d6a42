"""Distiller's model flags on the sample app: --thinnify, --exp-load-weights-from, --load-serialized,
--export-onnx, --summary modules/png/png_w_params, the --qe flags' short aliases and --qe-no-clip-layers,
--qe-scale-approx-bits, --qe-save-fp-weights, the deprecated --resume; --amc, --greedy, LAPQ and the conversion to
PyTorch's quantized modules refused by name. Bad input is one line and
exit status 2 before any run directory exists."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill_ee.apputils.app import main
from distill_ee.apputils.args import parse_args
from distill_ee.apputils.model_summary import draw_model_png
from distill_ee.apputils.models import create_model
from distill_ee.checkpoint import read_checkpoint, save_checkpoint
from distill_ee.distiller_absent import absence_note
from distill_ee.errors import ConfigError
from distill_ee.quantization import collect_stats
from distill_ee.quantization.quantset import LayerSettings, QuantizationSet, approx_scale, attach_quantization

META = {"arch": "lenet_mnist", "dataset": "mnist5k", "input_shape": [1, 28, 28], "num_classes": 10}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained lenet_mnist checkpoint saved after epoch 3, two of conv1's filters zero."""
    torch.manual_seed(0)
    model = create_model("lenet_mnist", num_classes=10, in_channels=1)
    with torch.no_grad():
        model.conv1.weight[:2] = 0
        model.conv1.bias[:2] = 0
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pth.tar"
    save_checkpoint(path, model, epoch=3, best_top1=10.0, **META)
    return path


def run_dir(out: Path, name: str) -> Path:
    """The one run directory named ``name`` under ``out``."""
    found = list(out.glob(f"{name}___*"))
    assert len(found) == 1, found
    return found[0]


def app(out, name, *flags):
    """Run the app into ``out`` under ``name``; its run directory."""
    assert main([*flags, "-o", str(out), "-n", name, "--no-timing"]) == 0
    return run_dir(out, name)


def refused(argv, capsys, out):
    """The one stderr line of a run refused with exit status 2 (a parse error or a checked flag), nothing
    written."""
    try:
        code = main([*argv, "-o", str(out), "--no-timing"])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err.strip()


# --------------------------------------------------------------------------- the parser
@pytest.mark.parametrize("alias, flag, value, dest, expected", [
    ("--qem", "--qe-mode", "asym_u", "qe_mode", "asym_u"),
    ("--qema", "--qe-mode-acts", "asym_s", "qe_mode_acts", "asym_s"),
    ("--qemw", "--qe-mode-wts", "sym_restr", "qe_mode_wts", "sym_restr"),
    ("--qeba", "--qe-bits-acts", "6", "qe_bits_acts", 6),
    ("--qebw", "--qe-bits-wts", "4", "qe_bits_wts", 4),
    ("--qeca", "--qe-clip-acts", "avg", "qe_clip_acts", "avg"),
    ("--qencl", "--qe-no-clip-layers", "fc2", "qe_no_clip_layers", ["fc2"]),
    ("--qenql", "--qe-no-quant-layers", "fc2", "qe_no_quant_layers", ["fc2"]),
    ("--qepc", "--qe-per-channel", None, "qe_per_channel", True),
    ("--qesab", "--qe-scale-approx-bits", "16", "qe_scale_approx_bits", 16),
    ("--det", "--deterministic", None, "deterministic", True),
])
def test_distillers_short_aliases_set_the_same_flag(alias, flag, value, dest, expected):
    tail = [] if value is None else [value]
    assert getattr(parse_args([alias, *tail]), dest) == expected == getattr(parse_args([flag, *tail]), dest)


def test_summary_takes_distillers_choices_in_any_case():
    assert parse_args(["--summary", "PNG", "--summary", "modules", "--summary", "png_w_params"]).summary == [
        "png", "modules", "png_w_params"]


@pytest.mark.parametrize("argv, note_of, prefix", [
    (["--amc"], "--amc", ""),
    (["--greedy"], "--greedy", ""),
    (["--greedy-target-density", "0.5", "--greedy"], "--greedy", "--greedy-target-density: "),
    (["--greedy-pruning-step", "0.1"], "--greedy", "--greedy-pruning-step: "),
    (["--qe", "--qe-lapq"], "--qe-lapq", ""),
    (["--qe", "--qe-coordinate-search"], "--qe-lapq", "--qe-coordinate-search: "),
    (["--lapq-maxiter", "2"], "--qe-lapq", "--lapq-maxiter: "),
    (["--lapq-search-clipping"], "--qe-lapq", "--lapq-search-clipping: "),
    (["--qe", "--qe-convert-pytorch"], "--qe-convert-pytorch", ""),
    (["--qe", "--qept"], "--qe-convert-pytorch", "--qept: "),
    (["--qe-pytorch-backend", "qnnpack"], "--qe-convert-pytorch", "--qe-pytorch-backend: "),
])
def test_distiller_options_not_implemented_are_refused_by_name(argv, note_of, prefix, capsys, tmp_path):
    err = refused(argv, capsys, tmp_path / "runs")
    assert err == f"compress_classifier.py: error: {prefix}{absence_note('option', note_of)}"


# --------------------------------------------------------------------------- bad input, before any output
def test_bad_model_tool_flags_are_one_line_before_any_output(checkpoint, capsys, tmp_path):
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"")
    cases = [
        (["--thinnify"], "error: --thinnify needs the checkpoint to thin: give --resume-from CHECKPOINT"),
        (["--exp-load-weights-from", str(checkpoint), "--resume-from", str(checkpoint)],
         "error: --exp-load-weights-from and --resume-from both load a checkpoint: give one (weights only and "
         "epoch 0, or the whole run state)"),
        (["--thinnify", "--resume-from", str(checkpoint), "--evaluate"],
         "error: --thinnify acts on the loaded model and exits, so --evaluate would not run: give them in separate "
         "runs"),
        (["--export-onnx", "--sense", "filter"],
         "error: --export-onnx acts on the loaded model and exits, so --sense would not run: give them in separate "
         "runs"),
        (["--export-onnx", "model.txt"], "error: --export-onnx model.txt: give a file name ending in .onnx, e.g. "
                                         "model.onnx"),
        (["--export-onnx", "../out.onnx"], "error: --export-onnx ../out.onnx: a relative path is inside the run "
                                           "directory and cannot contain '..'; give an absolute path to write "
                                           "elsewhere"),
        (["--export-onnx", str(existing)], f"error: --export-onnx {existing}: the file exists already (it is not "
                                           "overwritten); remove it or give another path"),
        (["--export-onnx", str(tmp_path / "no" / "m.onnx")],
         f"error: --export-onnx {tmp_path / 'no' / 'm.onnx'}: the folder {tmp_path / 'no'} does not exist"),
        (["--exp-load-weights-from", str(tmp_path / "missing.pth.tar")],
         f"error: {tmp_path / 'missing.pth.tar'}: no such checkpoint file"),
        (["--qe-scale-approx-bits", "8"], "error: --qe-scale-approx-bits applies only with --quantize-eval/--qe"),
        (["--qe-save-fp-weights"], "error: --qe-save-fp-weights applies only with --quantize-eval/--qe"),
        (["--qe", "--qesab", "1"], "error: --qe-scale-approx-bits is the integer multiplier's bits, from 2 to 32; "
                                   "got 1"),
        (["--qe", "--qencl", "fc2"], "error: --qe-no-clip-layers applies only with --qe-clip-acts avg, n_std, gauss "
                                     "or laplace (with none no layer's activations are clipped)"),
        (["--qe", "--qeca", "avg", "--qencl", "conv9"],
         "error: --qe-no-clip-layers 'conv9': no convolution or linear layer of the model has that name (its "
         "layers: conv1, conv2, fc1, fc2)"),
        (["--qe", "--qe-config-file", str(tmp_path / "q.yaml"), "--qesab", "8"],
         "error: --qe-scale-approx-bits cannot be given with --qe-config-file (its quantizers: section says how to "
         "quantize)"),
        (["--summary", "graph"], "compress_classifier.py: error: argument --summary: invalid choice: 'graph' (choose "
                                 "from 'sparsity', 'compute', 'model', 'modules', 'png', 'png_w_params') (see "
                                 "compress_classifier.py --help)"),
    ]
    for argv, message in cases:
        assert refused(argv, capsys, tmp_path / "runs") == message, argv


def test_a_checkpoint_for_another_architecture_is_refused_for_its_weights(capsys, tmp_path):
    model = create_model("simplenet_v2_mnist", num_classes=10, in_channels=1)
    path = tmp_path / "other.pth.tar"
    save_checkpoint(path, model, epoch=0, **{**META, "arch": "simplenet_v2_mnist"})
    assert refused(["--exp-load-weights-from", str(path)], capsys, tmp_path / "runs") == (
        f"error: {path}: checkpoint is for --arch 'simplenet_v2_mnist', not 'lenet_mnist'")


def test_a_whole_pickled_model_is_not_loaded_even_with_load_serialized(capsys, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(create_model("lenet_mnist", num_classes=10, in_channels=1), path)
    err = refused(["--load-serialized", "--resume-from", str(path), "--evaluate"], capsys, tmp_path / "runs")
    assert err.startswith(f"error: {path}: refused to load: the checkpoint carries pickled Python objects")


def test_an_untraceable_model_or_no_matplotlib_is_one_line_for_the_graph(tmp_path, monkeypatch):
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ConfigError, match=r"^--summary png: torch.fx cannot trace Branchy \(") as info:
        draw_model_png(Branchy(), tmp_path / "model.png")
    assert "\n" not in str(info.value)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="^--summary png needs matplotlib to draw the graph"):
        draw_model_png(nn.Linear(2, 2), tmp_path / "model.png")
    assert not (tmp_path / "model.png").exists()


# --------------------------------------------------------------------------- behaviour
def test_summary_modules_lists_every_leaf_module_with_its_type(capsys):
    assert main(["--summary", "modules"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[:2] for line in out.splitlines()[2:5]] == [["conv1", "Conv2d"], ["relu1", "ReLU"],
                                                                      ["pool1", "MaxPool2d"]]
    assert "11 leaf modules" not in out and "10 leaf modules, 431,080 parameters" in out


def test_summary_png_draws_the_graph_into_the_run_directory(tmp_path):
    run = app(tmp_path, "png", "--summary", "png_w_params")
    assert (run / "model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_thinnify_writes_a_smaller_checkpoint_that_resumes(checkpoint, tmp_path):
    run = app(tmp_path, "thin", "--thinnify", "--resume-from", str(checkpoint))
    summary = json.loads((run / "summary.json").read_text())["thinnify"]
    assert summary["checkpoint"] == "lenet_thinned_checkpoint.pth.tar"
    assert summary["parameters_before"] - summary["parameters_after"] == 2 * (25 + 1) + 2 * 50 * 25
    state = read_checkpoint(run / summary["checkpoint"])
    assert state["state_dict"]["conv1.weight"].shape[0] == 18 and state["epoch"] == 0
    evaluated = app(tmp_path, "eval", "--resume-from", str(run / summary["checkpoint"]), "--evaluate")
    assert json.loads((evaluated / "summary.json").read_text())["top1"] >= 0


@pytest.mark.slow
def test_exp_load_weights_from_loads_the_weights_only_and_trains_from_epoch_0(checkpoint, tmp_path, capsys):
    run = app(tmp_path, "w", "--exp-load-weights-from", str(checkpoint), "--load-serialized", "--epochs", "1",
              "-p", "1000", "--seed", "0")
    assert "Loaded the weights of" in capsys.readouterr().err
    assert (run / "metrics.csv").read_text().splitlines()[1].startswith("0,")  # checkpoint's epoch 3 ignored
    evaluated = [json.loads((app(tmp_path, name, flag, str(checkpoint), "--evaluate") / "summary.json").read_text())
                 for name, flag in (("lean", "--exp-load-weights-from"), ("full", "--resume-from"))]
    assert evaluated[0]["top1"] == evaluated[1]["top1"]


def test_distillers_deprecated_resume_means_resume_from_with_a_fresh_optimizer():
    args = parse_args(["--resume", "old.pth.tar"])
    assert (args.resume_from, args.reset_optimizer) == ("old.pth.tar", True)
    assert parse_args(["--resume-from", "old.pth.tar"]).reset_optimizer is False


def test_resume_and_resume_from_together_are_refused(capsys, tmp_path):
    err = refused(["--resume", "a.pth.tar", "--resume-from", "b.pth.tar"], capsys, tmp_path / "runs")
    assert err == ("error: --resume (Distiller's deprecated spelling) and --resume-from both name a checkpoint: "
                   "give --resume-from only")


@pytest.mark.slow
def test_deprecated_resume_warns_and_starts_at_epoch_0_with_the_checkpoints_weights(checkpoint, tmp_path, capsys):
    run = app(tmp_path, "r", "--resume", str(checkpoint), "--epochs", "1", "-p", "1000", "--seed", "0")
    err = capsys.readouterr().err
    assert f"--resume is deprecated (as in Distiller): it means --resume-from {checkpoint} --reset-optimizer" in err
    assert (run / "metrics.csv").read_text().splitlines()[1].startswith("0,")


@pytest.mark.slow
def test_export_onnx_writes_the_model_with_a_softmax_output(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run = app(tmp_path, "x", "--export-onnx", "sub/lenet.onnx", "--resume-from", str(checkpoint))
    assert json.loads((run / "summary.json").read_text())["export_onnx"]["files"] == ["sub/lenet.onnx"]
    session = ort.InferenceSession(str(run / "sub" / "lenet.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    probs = session.run(None, {"input": x.numpy()})[0]
    model = create_model("lenet_mnist", num_classes=10, in_channels=1)
    model.load_state_dict(read_checkpoint(checkpoint)["state_dict"])
    expected = torch.softmax(model.eval()(x), dim=1).detach().numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.slow
def test_qe_flags_unclipped_layers_scale_approximation_and_the_fp32_quantized_checkpoint(checkpoint, tmp_path):
    run = app(tmp_path, "q", "--resume-from", str(checkpoint), "--evaluate", "--qe", "--qeca", "avg",
              "--qencl", "fc2", "--qesab", "8", "--qe-save-fp-weights")
    quantization = json.loads((run / "summary.json").read_text())["quantization"]
    assert quantization["defaults"]["clip_acts"] == "AVG" and quantization["defaults"]["scale_approx_bits"] == 8
    assert quantization["overrides"]["fc2"]["clip_acts"] == "NONE"
    state = read_checkpoint(run / quantization["checkpoint"])
    assert quantization["checkpoint"] == "q_quantized_checkpoint.pth.tar" and "quantized_top1" in state
    assert any(step["kind"] == "quantization" for step in state["structure"])
    assert torch.equal(state["state_dict"]["conv1.weight"], read_checkpoint(checkpoint)["state_dict"]["conv1.weight"])


def test_scale_approximation_is_distillers_multiplier_and_shift():
    # shift = floor(log2(255 / 0.3)) = 9, multiplier = floor(0.3 * 2^9) = 153
    assert approx_scale(torch.tensor(0.3), 8).item() == 153 / 512
    assert approx_scale(torch.tensor(5.0), 4).item() == 5.0  # shift 1: 10 / 2


@pytest.mark.parametrize("per_channel", [False, True])
def test_requantizing_with_an_approximated_scale_moves_the_output_by_its_precision(per_channel):
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(16, 3, 8, 8)
    outputs = {}
    for bits in (None, 2, 16):
        model = __import__("copy").deepcopy(layer)
        settings = LayerSettings(per_channel_wts=per_channel, scale_approx_bits=bits)
        qset = QuantizationSet({"0": settings, "2": settings})
        stats = collect_stats(model, [x])
        attach_quantization(model, qset).set_ranges(stats)
        with torch.no_grad():
            outputs[bits] = model(x)
    coarse = (outputs[2] - outputs[None]).abs().max()
    fine = (outputs[16] - outputs[None]).abs().max()
    assert coarse > 10 * fine and fine < 0.05 * outputs[None].abs().max()
