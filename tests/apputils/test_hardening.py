"""Bad input to the sample app: every case is one line on stderr and exit status 2, found before the first
training step where it can be, never a traceback; damaged and malformed checkpoints included."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_ee.apputils.app import main
from distill_ee.apputils.models import create_model
from distill_ee.checkpoint import read_checkpoint, write_checkpoint
from distill_ee.errors import DistillEEError

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml"
BAD = ROOT / "tests" / "schedule" / "bad"
NAME_MESSAGE = ("-n/--name must be a plain name (no path separators, at most 100 characters), got {!r}; use "
                "-o/--out-dir to choose the folder")

#: (arguments, the exact error line after "error: "), each refused before any run directory exists
def unknown_arch(name):
    """The zoo's message for an unknown architecture."""
    try:
        create_model(name, num_classes=10, in_channels=1)
    except DistillEEError as err:
        return str(err)
    raise AssertionError(f"{name} is a known architecture")


BEFORE_ANY_OUTPUT = [
    (["--lr", "-1"], "--lr must be above 0.0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--momentum", "-0.5"], "--momentum must be at least 0.0 and at most 1.0, got -0.5"),
    (["--momentum", "1"], "--momentum must be below 1, got 1.0"),
    (["--wd", "-1"], "--wd must be at least 0.0, got -1.0"),
    (["--seed", "-1"], "--seed must be at least 0 and at most 4294967295, got -1"),
    (["--seed", "99999999999"], "--seed must be at least 0 and at most 4294967295, got 99999999999"),
    (["--epochs", "-1"], "--epochs must be at least 0 and at most 1000000, got -1"),
    (["-b", "0"], "-b/--batch-size must be at least 1 and at most 1048576, got 0"),
    (["-n", "a/b"], NAME_MESSAGE.format("a/b")),
    (["-n", "../../escaped"], NAME_MESSAGE.format("../../escaped")),
    (["--sense", "filter", "--sense-range", "0", "0.5", "nan"],
     "--sense-range takes three finite numbers, got 0.0 0.5 nan"),
    (["--sense", "filter", "--sense-range", "0", "1", "1e-10"],
     "--sense-range 0.0 1.0 1e-10 asks for 10,000,000,000 sparsity levels per weight; at most 1000 (use a "
     "larger STEP)"),
    (["--evaluate"], "--evaluate needs a trained model: give --resume-from CHECKPOINT (or --pretrained)"),
    (["--reset-optimizer"], "--reset-optimizer applies only with --resume-from"),
    (["--skip-checksum"], "--skip-checksum applies only with --resume-from"),
    (["--ee-temperature"], "--ee-temperature applies only with --ee-calibrate"),
    (["--ee-calibrate", "foo"], "calibration target 'foo': expected KIND=VALUE, e.g. drop=0.5 (top-1 points below "
                                "the final exit), macs=0.4 (share of the backbone's MACs per sample), latency=0.4 "
                                "(share of its measured time), proportions=0.5,0.3 (share of the samples leaving at "
                                "each early exit) or budget=0.5 (MSDNet's geometric shares for an average budget)"),
    (["--ee-calibrate", "latency=2"], "calibration target 'latency=2': latency is a fraction of the backbone's "
                                      "measured time in (0, 1], e.g. latency=0.4 or latency=40%"),
    (["--ee-latency-batch", "4"], "--ee-latency-batch applies only with --ee-calibrate latency=F"),
    (["--qe-bits-acts", "4"], "--qe-bits-acts applies only with --quantize-eval/--qe"),
    (["--qe", "--qe-bits-wts", "1"], "--qe-bits-wts must be at least 2 and at most 16, got 1"),
    (["--qe", "--qe-calibration", "0"], "--qe-calibration is a portion of the validation split in (0, 1], got 0.0"),
    (["--qe", "--qe-clip-n-stds", "2"], "--qe-clip-n-stds takes a number in (0, 100] with --qe-clip-acts n_std, "
                                        "got 2.0"),
    (["--qe", "--qe-config-file", "x.yaml", "--qe-per-channel"],
     "--qe-per-channel cannot be given with --qe-config-file (its quantizers: section says how to quantize)"),
    (["--qe", "--qe-stats-file", "s.yaml", "--qe-calibration", "0.5"],
     "--qe-stats-file and --qe-calibration both give the activation statistics: choose one"),
    (["--qe", "--qe-stats-file", "missing.yaml"], "missing.yaml: cannot be read (No such file or directory)"),
    (["--qe", "--vs", "0"], "post-training quantization collects its activation statistics on the validation "
                            "split, and --vs 0 leaves none; give --qe-stats-file"),
    (["--ee-latency-runtime", "onnx"], "--ee-latency-runtime applies only with --ee-calibrate latency=F"),
    (["--ee-calibrate", "latency=0.5", "--ee-latency-batch", "0"],
     "--ee-latency-batch must be at least 1 and at most 4096, got 0"),
    (["--ee-calibrate", "budget=0"], "calibration target 'budget=0': budget is a fraction of the backbone's MACs "
                                     "in (0, 1], e.g. budget=0.4 or budget=40%"),
    (["--ee-calibrate", "drop=1", "--vs", "0"],
     "--ee-calibrate chooses thresholds on the validation split, and --vs 0 leaves none"),
    (["--ee-confidence", "0.9"], "--ee-confidence applies only with --ee-calibrate"),
    (["--ee-consistency", "textual"], "--ee-consistency applies only with --ee-confidence"),
    (["--ee-calibrate", "drop=1", "--ee-confidence", "1.5"],
     "--ee-confidence is a probability in (0, 1), e.g. 0.9; got 1.5"),
    (["--ee-calibrate", "proportions=0.5,0.3", "--ee-confidence", "0.9"],
     "--ee-confidence certifies drop= and macs= targets, not fixed proportions"),
    (["--gpus", "first"], "--gpus takes comma-separated GPU numbers, e.g. 0 or 0,1; got 'first'"),
    (["--kd-temperature", "4"], "--kd-temperature applies only with --kd-teacher ARCH"),
    (["--kd-teacher", "lenet_mnist", "--kd-temperature", "0"], "--kd-temperature must be a finite number above 0, "
                                                                "got 0.0"),
    (["--kd-teacher", "lenet_mnist", "--kd-distill-wt", "nan"], "--kd-distill-wt must be a finite number of at "
                                                                 "least 0, got nan"),
    (["--kd-teacher", "lenet_mnist", "--kd-teacher-wt", "0.5"],
     "--kd-teacher-wt: the teacher is frozen here (eval mode, no gradients); only 0 is accepted"),
    (["--kd-teacher", "lenet_mnist", "--kd-start-epoch", "1", "--epochs", "1"],
     "--kd-start-epoch must be an epoch of the run (0 to 0), got 1"),
    (["--kd-teacher", "lenet_mnist", "--kd-pretrained"],
     "--kd-teacher lenet_mnist: no pretrained weights exist for 'lenet_mnist'; train it from scratch (drop "
     "--pretrained)"),
    (["--compress", str(BAD / "routing_gate_unknown.yaml")],
     f"{BAD / 'routing_gate_unknown.yaml'}:7: routing.skip.gate: 'lstm' is not valid (valid: ffn, rnn)"),
    (["--compress", str(BAD / "routing_pattern_matches_no_block.yaml")],
     f"{BAD / 'routing_pattern_matches_no_block.yaml'}:6: routing.skip.blocks[0]: pattern 'conv*' matches no block "
     "that can be skipped (it matched conv1, conv2)"),
    (["--kd-teacher", "lenet_mnis"], f"--kd-teacher lenet_mnis: {unknown_arch('lenet_mnis')}"),
    (["--kd-teacher", "resnet20_cifar", "--kd-resume", str(ROOT / "no" / "teacher.pth")],
     f"--kd-resume {ROOT / 'no' / 'teacher.pth'}: no such checkpoint file"),
    ([str(ROOT)], f"dataset 'mnist': idx files not found: {ROOT}; expected {ROOT / 'MNIST' / 'raw'}{os.sep} or "
                  f"{ROOT / 'raw'}{os.sep} or {ROOT}{os.sep} holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                  "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may end in .gz) (no --dataset given: 'mnist' "
                  "was inferred from --arch lenet_mnist; give --dataset to choose another)"),
    (["--dataset", "mnist5k", str(ROOT)],
     f"dataset 'mnist5k' is embedded and takes no DATASET_DIR, but {str(ROOT)!r} was given and holds no "
     "mnist_5k.csv.gz to use instead; drop it, or name its dataset with --dataset"),
    (["--arch", "lenet_mnist", "--dataset", "cifar10"],
     "--arch lenet_mnist cannot take the 'cifar10' images (N, 3, 32, 32): mat1 and mat2 shapes cannot be "
     "multiplied (2x1250 and 800x500); choose an architecture made for this dataset"),
    (["--tensorboard", str(ROOT / "README.md" / "tb")],
     f"--tensorboard: cannot write to {ROOT / 'README.md' / 'tb'}: {ROOT / 'README.md'} is not a directory"),
    (["--mlflow", "ftp://host/mlruns"], "--mlflow ftp://host/mlruns: MLflow tracking URI scheme 'ftp' is not "
                                        "supported here; give a local path or a file:, sqlite:, http: or https: URI"),
    (["--mlflow", "sqlite:db"], "--mlflow sqlite:db: give the database file as sqlite:///PATH (four slashes for an "
                                "absolute path)"),
    (["--mlflow-experiment", "x"], "--mlflow-experiment applies only with --mlflow"),
    (["--mlflow", "--sense", "filter"], "--mlflow tracks a training or --evaluate run, and --sense runs alone and "
                                        "exits: give them in separate runs"),
    (["--compress", str(BAD / "gamma_nan.yaml")],
     f"{BAD / 'gamma_nan.yaml'}:4: lr_schedulers.step.gamma: must be a number, got nan"),
    (["--compress", str(BAD / "learned_policy_tradeoff_negative.yaml")],
     f"{BAD / 'learned_policy_tradeoff_negative.yaml'}:7: early_exits.branchy.learned_policy.tradeoff: the "
     "trade-off must be >= 0 (errors per sample that one backbone's worth of MACs is worth), got -2"),
    (["--compress", str(BAD / "gate_head_unknown_layer.yaml")],
     f"{BAD / 'gate_head_unknown_layer.yaml'}:8: early_exits.branchy.gate.head[0]: unknown branch layer type "
     "'confidence_feature'; did you mean 'confidence_features'? (valid: adaptive_avg_pool, adaptive_avgpool, "
     "avg_pool, avgpool, batchnorm, bn, channels_first, cls_token, confidence_features, conv, conv2d, dropout, fc, "
     "flatten, global_avgpool, layer_norm, layernorm, linear, max_pool, maxpool, relu, token_mean)"),
]


def run(argv, capsys, out):
    """Exit status and the last line on stderr (progress lines may come before an error found in training)."""
    code = main([*argv, "-o", str(out), "--no-timing", "-p", "1000"])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return code, err.splitlines()[-1] if err else ""


@pytest.mark.parametrize("argv, message", BEFORE_ANY_OUTPUT, ids=[" ".join(a)[:40] for a, _ in BEFORE_ANY_OUTPUT])
def test_bad_flags_are_one_line_before_any_output(argv, message, capsys, tmp_path):
    code = main([*argv, "-o", str(tmp_path / "runs"), "--no-timing"])
    assert code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--ee-calibrate", "drop=1"], "--ee-calibrate needs early exits (in the --compress schedule or the checkpoint)"),
    (["--ee-export"], "--ee-export needs early exits (in the --compress schedule or the checkpoint)"),
])
def test_flags_that_need_exits_are_refused_before_the_first_epoch(argv, message, capsys, tmp_path):
    code, err = run([*argv, "--epochs", "3"], capsys, tmp_path)
    assert code == 2 and err == f"error: {message}"
    assert not list(tmp_path.glob("*/checkpoint.pth.tar")) and not list(tmp_path.glob("*/metrics.csv"))


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["--ee-export", "tflite"], "argument --ee-export: invalid choice: 'tflite' (choose from 'onnx', 'torchscript')"),
    (["--ee-latency-runtime", "gpu"], "argument --ee-latency-runtime: invalid choice: 'gpu' (choose from 'torch', "
                                      "'onnx')"),
    (["--qe-mode", "linear"], "argument --qe-mode/--qem: invalid choice: 'linear' (choose from 'sym', 'sym_restr', "
                              "'asym_u', 'asym_s')"),
    (["--dist-backend", "tcp"],
     "argument --dist-backend: invalid choice: 'tcp' (choose from 'gloo', 'nccl', 'mpi', 'ucc')"),
])
def test_argparse_errors_are_one_line_with_a_hint(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    hint = "(see compress_classifier.py --help)"
    assert capsys.readouterr().err.strip() == f"compress_classifier.py: error: {message} {hint}"


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--lr", "nan"], ["-n", "a/b"], ["--compress", str(BAD / "alias_bomb.yaml")],
                                  ["--compress", str(BAD / "not_utf8.yaml")], ["--epochs", "x"]])
def test_through_the_real_entry_point_no_traceback(argv, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "compress_classifier.py"), *argv, "-o", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr


def test_a_non_finite_loss_stops_training_with_its_epoch_and_step(capsys, tmp_path):
    code, err = run(["--compress", str(SCHEDULE), "--epochs", "2", "--lr", "1000", "--seed", "0"], capsys, tmp_path)
    assert code == 2
    assert err.startswith("error: epoch 0, step ") and "the training loss is nan (not finite)" in err
    assert "lower the learning rate (it is 1000)" in err
    assert not list(tmp_path.glob("*/best.pth.tar")) and not list(tmp_path.glob("*/checkpoint.pth.tar"))


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    args = ["--compress", str(SCHEDULE), "--epochs", "1", "-b", "128", "--lr", "0.02", "--seed", "3",
            "--deterministic", "--no-timing", "-o", str(out), "-n", "exp", "-p", "1000"]
    assert main(args) == 0
    return next(out.glob("exp___*")) / "checkpoint.pth.tar"


def edited(checkpoint, tmp_path, edit):
    state = torch.load(checkpoint, weights_only=True)
    state.pop("sha256")  # an edited file: only the structure checks apply
    edit(state)
    path = tmp_path / "edited.pth.tar"
    torch.save(state, path)
    return path


def resume(path, capsys, tmp_path, *extra):
    return run(["--resume-from", str(path), "--compress", str(SCHEDULE), "--epochs", "2", *extra], capsys,
               tmp_path / "runs")


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("epoch"), "malformed checkpoint: 'epoch' must be a whole number >= 0 to resume from, got none "
                               "(--reset-optimizer starts from its weights at epoch 0)"),
    (lambda s: s.update(epoch="three"), "malformed checkpoint: 'epoch' must be a whole number >= 0 to resume "
                                        "from, got str 'three' (--reset-optimizer starts from its weights at epoch 0)"),
    (lambda s: s.update(state_dict=[1, 2]), "malformed checkpoint: 'state_dict' must be a mapping of parameter "
                                            "names to tensors, got list"),
    (lambda s: s.update(rng_state=torch.zeros(3)), "malformed checkpoint: 'rng_state' must be a byte tensor, got "
                                                   "torch.float32"),
    (lambda s: s["compression_sched"].update(policies=3), "malformed checkpoint: 'compression_sched.policies' must "
                                                          "be a mapping, got int"),
    (lambda s: s.update(structure=[{"kind": "quantize"}]), "unknown structure step kind 'quantize' (valid: "
                                                           "early_exits, quantization, routing, thinning); is the "
                                                           "plugin that made it installed?"),
])
def test_malformed_checkpoints_are_one_line(checkpoint, edit, message, capsys, tmp_path):
    path = edited(checkpoint, tmp_path, edit)
    code, err = resume(path, capsys, tmp_path)
    assert code == 2 and err == f"error: {path}: {message}"


def flip_bytes_in_the_largest_tensor(source, target):
    state = read_checkpoint(source)
    biggest = max((t for t in state["state_dict"].values() if isinstance(t, torch.Tensor)), key=torch.Tensor.numel)
    data = bytearray(source.read_bytes())
    at = bytes(data).find(biggest.numpy().tobytes()[:4096]) + 1000
    for i in range(at, at + 64):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))


@pytest.mark.slow
def test_flipped_bytes_are_caught_by_the_checksum_unless_told_to_skip_it(checkpoint, capsys, tmp_path):
    damaged = tmp_path / "damaged.pth.tar"
    flip_bytes_in_the_largest_tensor(checkpoint, damaged)
    code, err = resume(damaged, capsys, tmp_path)
    assert code == 2 and err == (f"error: {damaged}: the checkpoint is damaged: its contents do not match the SHA-256 "
                                 "it was saved with (bytes changed on disk or in a copy)")
    code, _ = run(["--resume-from", str(damaged), "--evaluate", "--skip-checksum"], capsys, tmp_path / "runs")
    assert code == 0


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty, not a checkpoint"),
    (random.Random(0).randbytes(4096), "not a PyTorch checkpoint"),
    (b"PK\x03\x04" + random.Random(1).randbytes(4096), "not a readable PyTorch checkpoint (truncated or damaged"),
], ids=["empty", "random bytes", "a damaged zip"])
def test_files_that_are_not_checkpoints_say_so(content, message, capsys, tmp_path):
    path = tmp_path / "junk.pth.tar"
    path.write_bytes(content)
    code, err = resume(path, capsys, tmp_path)
    assert code == 2 and err.startswith(f"error: {path}: {message}")


@pytest.mark.slow
def test_a_checkpoint_with_exits_resumes_without_its_schedule(checkpoint, capsys, tmp_path):
    code, err = run(["--resume-from", str(checkpoint), "--epochs", "2"], capsys, tmp_path)
    assert code == 0, err
    saved = read_checkpoint(next(tmp_path.glob("*/checkpoint.pth.tar")))
    assert saved["epoch"] == 1 and [s["kind"] for s in saved["structure"]] == ["early_exits"]


@pytest.mark.slow
def test_resuming_with_nothing_left_to_train_keeps_the_epoch_counter(checkpoint, capsys, tmp_path):
    code, err = run(["--resume-from", str(checkpoint), "--compress", str(SCHEDULE), "--epochs", "1",
                     "--ee-calibrate", "drop=1"], capsys, tmp_path)
    assert code == 0, err
    assert read_checkpoint(next(tmp_path.glob("*/checkpoint.pth.tar")))["epoch"] == 0  # epoch 0 was trained, not 1


def test_temporaries_of_killed_writers_are_removed_and_files_keep_the_umask(tmp_path):
    stale = tmp_path / ".checkpoint.pth.tar.99999999.x1y2.tmp"  # a pid no process has
    stale.write_bytes(b"half a checkpoint")
    mine = tmp_path / f".best.pth.tar.{os.getpid()}.abcd.tmp"  # a writer still running
    mine.write_bytes(b"in progress")
    before = os.umask(0o027)
    try:
        write_checkpoint(tmp_path / "checkpoint.pth.tar", {"epoch": 1})
    finally:
        os.umask(before)
    assert not stale.exists() and mine.exists()
    assert (tmp_path / "checkpoint.pth.tar").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("target", ["macs=0.05", "budget=0.05"])
def test_a_budget_no_setting_can_meet_is_refused_before_training(target, capsys, tmp_path):
    schedule = ROOT / "schedules" / "lenet_mnist.earlyexit.yaml"
    code, err = run(["--compress", str(schedule), "--ee-calibrate", target, "--no-timing"], capsys, tmp_path / "runs")
    assert code == 2
    assert err == f"error: --ee-calibrate {target}: even every sample leaving at the first exit costs 24.0% of the " \
                  "backbone's MACs"
    assert not (tmp_path / "runs").exists()


def test_builtin_classifiers_on_a_model_without_them_are_refused_before_training(capsys, tmp_path):
    schedule = ROOT / "schedules" / "msdnet_mnist.yaml"
    code, err = run(["--arch", "lenet_mnist", "--compress", str(schedule), "--epochs", "1"], capsys, tmp_path)
    line = next(i for i, text in enumerate(schedule.read_text().splitlines(), 1) if "attach: builtin" in text)
    assert code == 2
    assert err == (f"error: {schedule}:{line}: early_exits.msdnet.attach: LeNet declares no built-in classifiers; "
                   f"give every exit `attach` and `branch`")
    assert not list(tmp_path.glob("*/metrics.csv"))


def test_a_stats_file_that_misses_a_layer_is_refused_before_training(capsys, tmp_path):
    stats = tmp_path / "stats.yaml"
    one = "{min: 0, max: 1, avg_min: 0, avg_max: 1, mean: 0, std: 1}"
    stats.write_text(f"conv1: {{inputs: {{0: {one}}}, output: {one}}}\n")
    code, err = run(["--compress", str(SCHEDULE), "--epochs", "1", "--qe", "--qe-stats-file", str(stats)], capsys,
                    tmp_path)
    assert code == 2 and err == (f"error: {stats}: no statistics for layer 'conv2' (the file must come from this "
                                 f"model, exits included); collect them with --qe-calibration")
    assert not list(tmp_path.glob("*/metrics.csv"))
