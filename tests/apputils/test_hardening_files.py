"""Every file a user hands the app, careless or hostile, through the real entry points: one located line, exit
status 2, nothing written before the refusal, and no hang.

Special files (a FIFO, a device, a pipe, a directory) as the schedule, the cascade file, the tier file, the
statistics file and the quantization config; YAML files that are not UTF-8 or not of their schema; tier names
that would reach outside the run directory; cascade members trained on other data or with broken weights;
checkpoints whose structure steps, extra state or optimizer state are malformed; ``-o`` pointing at a dangling
link; post-training quantization of a checkpoint quantized by its own training.
"""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_ee import load_schedule, save_checkpoint
from distill_ee.apputils.cli import main
from distill_ee.apputils.models import create_model
from support import lenet_with_exit, no_hang

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = ROOT / "schedules" / "lenet_mnist.earlyexit_agp.yaml"
QAT = ROOT / "schedules" / "lenet_mnist.qat_exit.yaml"
TIERS = "tiers:\n  - {name: device, speed: 0.5}\n  - {name: cloud, speed: 1.0}\nlinks:\n" \
        "  - {bandwidth_mbps: 20, latency_ms: 10}\n"


@pytest.fixture(autouse=True)
def guarded():
    """A case that hangs fails here instead of blocking the suite (a FIFO opened for reading waits forever)."""
    with no_hang():
        yield


def refused(argv, capsys, out):
    """Run ``distill-ee ARGV -o OUT``; its refusal's one line (the last on stderr, after any progress lines),
    with exit status 2, no traceback and nothing in OUT."""
    code = main([*argv, "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return err[-1][len("error: "):]


@pytest.fixture
def special(tmp_path):
    """Makers of special files: a FIFO, a device, a directory, a pipe's descriptor."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    (tmp_path / "folder.yaml").mkdir()
    read_end, write_end = os.pipe()
    try:
        yield {"fifo": (str(fifo), "a FIFO or pipe"), "device": ("/dev/zero", "a character device"),
               "directory": (str(tmp_path / "folder.yaml"), "a directory"),
               "pipe": (f"/dev/fd/{read_end}", "a FIFO or pipe")}
    finally:
        os.close(read_end)
        os.close(write_end)


SURFACES = {
    "schedule": lambda p: ["--compress", p, "--epochs", "1"],
    "check": lambda p: ["check", p, "--arch", "lenet_mnist"],
    "cascade": lambda p: ["cascade", p],
    "tiers": lambda p: ["plan-split", "no_checkpoint.pth.tar", p],
    "stats": lambda p: ["--qe", "--qe-stats-file", p, "--epochs", "0"],
    "config": lambda p: ["--qe", "--qe-config-file", p, "--epochs", "0"],
}


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "pipe"])
@pytest.mark.parametrize("surface", list(SURFACES))
def test_a_special_file_is_refused_before_it_is_opened(surface, kind, special, capsys, tmp_path):
    path, what = special[kind]
    argv = SURFACES[surface](path)
    if surface == "check":
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"{path}: is not a regular file ({what})" in err[0]
        return
    message = refused(argv, capsys, tmp_path / "runs")
    assert message.startswith(f"{path}: is not a regular file ({what})"), message


@pytest.mark.slow
@pytest.mark.parametrize("surface", ["schedule", "tiers", "stats"])
def test_through_the_real_entry_point_a_fifo_is_one_line_and_exit_status_2(surface, special, tmp_path):
    path, what = special["fifo"]
    proc = subprocess.run([sys.executable, str(ROOT / "compress_classifier.py"), *SURFACES[surface](path), "-o",
                           str(tmp_path / "runs")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: is not a regular file ({what})"), lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_schedule_is_read_from_standard_input_when_named_dash(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SCHEDULE.read_bytes())))
    assert main(["check", "-", "--arch", "lenet_mnist"]) == 0
    assert "exit1" in capsys.readouterr().out


def test_a_schedule_on_standard_input_is_bounded_and_located(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x" * (2 << 20))))
    assert main(["check", "-", "--arch", "lenet_mnist"]) == 2
    assert capsys.readouterr().err.strip() == "error: <stdin>: is larger than 1 MiB: too large for a schedule"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"version: 1\npruners: [\n")))
    assert main(["check", "-", "--arch", "lenet_mnist"]) == 2
    assert capsys.readouterr().err.startswith("error: <stdin>:")


# --------------------------------------------------------------------------- YAML files of the wrong shape
def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


@pytest.mark.parametrize("surface, data, message", [
    ("cascade", b"members:\n  - \xff\xfe\n", ":2: not UTF-8 text: byte 0xff cannot be decoded"),
    ("cascade", "[1, 2]\n", ":1: a cascade file is a mapping with `members` (and `dataset`, `data`)"),
    ("cascade", "members: {a: 1}\n", ":1: members: must be a list"),
    ("tiers", b"tiers:\n - {name: \x80}\n", ":2: not UTF-8 text: byte 0x80 cannot be decoded"),
    ("tiers", "- tiers\n", ":1: a tier file is a mapping with `tiers` and `links`"),
    ("tiers", "tiers: " + "[" + ", ".join(["{name: t}"] * 10000) + "]\nlinks: []\n",
     ":1: tiers: must be a list of 2 to 8 tiers, the one holding the input first, got 10,000"),
    ("stats", "conv1: {output: [1, 2]}\n", ":1: conv1.output: statistics are a mapping of min, max"),
    ("stats", "conv1: {inputs: [1], output: {min: 0, max: 1, avg_min: 0, avg_max: 1, mean: 0, std: 1}}\n",
     ":1: conv1.inputs: `inputs` maps each input's index"),
    ("stats", b"\xff", ":1: not UTF-8 text"),
    ("stats", "".join(f"{n}: {{output: {{min: 0, max: 1, avg_min: 0, avg_max: 1, mean: 0, std: 1}}}}\n"
                      for n in ("conv1", "conv2", "fc1", "fc2", "early_exits.exit1.1")),
     ": no statistics for the input of layer 'conv1' (the file must come from this model"),
    ("config", "- quantizers\n", ":1: the quantization config must be a mapping"),
])
def test_a_yaml_file_is_read_by_the_hardened_reader_and_its_schema(surface, data, message, capsys, tmp_path):
    path = write(tmp_path, "input.yaml", data)
    got = refused(SURFACES[surface](path), capsys, tmp_path / "runs")
    assert got.startswith(path + message), got


@pytest.fixture(scope="module")
def exits_checkpoint(tmp_path_factory):
    """A lenet with one exit, saved untrained as the app saves checkpoints."""
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pth.tar"
    save_checkpoint(path, lenet_with_exit(), arch="lenet_mnist", dataset="mnist5k", input_shape=[1, 28, 28],
                    num_classes=10)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("name: device", "name: ../../../escape"),
     ":2: tiers[0].name: a tier's name becomes a file name: it must be a plain name"),
    (lambda t: t.replace("name: device", "name: a/b"), ":2: tiers[0].name: a tier's name becomes a file name"),
    (lambda t: t.replace("name: device", "name: " + "d" * 300), ":2: tiers[0].name: a tier's name becomes a file "
                                                                "name: it must be a plain name (no path separators, "
                                                                "at most 100 characters)"),
    (lambda t: t.replace("speed: 0.5", "speed: 1e-300"), ":2: tiers[0].speed: must be from 0.0001 to 10000"),
    (lambda t: t.replace("latency_ms: 10", "latency_ms: 1e12"), ":5: links[0].latency_ms: must be from 0 to 60000"),
])
def test_a_tier_file_is_refused_before_anything_is_written(edit, message, exits_checkpoint, capsys, tmp_path):
    path = write(tmp_path, "tiers.yaml", edit(TIERS))
    got = refused(["plan-split", str(exits_checkpoint), path], capsys, tmp_path / "runs")
    assert got.startswith(path + message), got


def test_a_profile_of_the_wrong_length_is_refused_before_measuring(exits_checkpoint, capsys, tmp_path):
    path = write(tmp_path, "tiers.yaml", TIERS.replace("speed: 0.5", "profile: {stages: [0.001], branches: []}"))
    got = refused(["plan-split", str(exits_checkpoint), path], capsys, tmp_path / "runs")
    assert got == "tier 'device': its profile lists 1 stages, the model has 2"


@pytest.mark.slow
def test_a_simulation_that_would_outlast_its_budget_is_refused_before_anything_is_written(exits_checkpoint, capsys,
                                                                                           tmp_path):
    slow = "profile: {stages: [30, 30], branches: [30]}"
    path = write(tmp_path, "tiers.yaml", TIERS.replace("speed: 0.5", slow).replace("speed: 1.0", slow))
    got = refused(["plan-split", str(exits_checkpoint), path, "--simulate", "20"], capsys, tmp_path / "runs")
    assert got.startswith("--simulate 20: the placement's expected latency of ") and "at most 300 s" in got


# --------------------------------------------------------------------------- cascades
def cascade_file(tmp_path, small, big):
    return write(tmp_path, "cascade.yaml", f"members:\n  - name: small\n    checkpoint: {small}\n"
                                           f"    rule: {{kind: max_prob, threshold: 0.9}}\n"
                                           f"  - name: big\n    checkpoint: {big}\n")


def test_a_member_trained_on_other_data_names_the_member_and_both_shapes(exits_checkpoint, capsys, tmp_path):
    cifar = tmp_path / "cifar.pth.tar"
    save_checkpoint(cifar, create_model("resnet20_cifar", 10, 3), arch="resnet20_cifar", dataset="cifar10")
    got = refused(["cascade", cascade_file(tmp_path, exits_checkpoint, cifar)], capsys, tmp_path / "runs")
    assert got == (f"member 'big' ({cifar}) was trained on 'cifar10' images (3, 32, 32), 10 classes; the data here "
                   "('mnist5k') are (1, 28, 28), 10 classes: give the dataset it was trained on")


def test_a_member_with_non_finite_weights_is_refused_before_the_run_directory(exits_checkpoint, capsys, tmp_path):
    broken = create_model("lenet_mnist", 10, 1)
    with torch.no_grad():
        broken.fc1.weight[0, 0] = float("nan")
    path = tmp_path / "broken.pth.tar"
    save_checkpoint(path, broken, arch="lenet_mnist", dataset="mnist5k")
    got = refused(["cascade", cascade_file(tmp_path, exits_checkpoint, path)], capsys, tmp_path / "runs")
    assert got == f"{path}: the weights are not finite (fc1.weight): the training that saved them diverged; " \
                  "resume from an earlier checkpoint"


# --------------------------------------------------------------------------- checkpoints
def edited(source, tmp_path, edit):
    state = torch.load(source, weights_only=True)
    state.pop("sha256")
    edit(state)
    path = tmp_path / "edited.pth.tar"
    torch.save(state, path)
    return str(path)


def steps(state):
    return state["structure"]


@pytest.mark.parametrize("edit, message", [
    (lambda s: steps(s)[0].update(config="exits: everything"),
     "structure step 1 of 1 (early exits ''): malformed step: config: must be a mapping"),
    (lambda s: steps(s)[0].update(input_shape=[1, -28, 28]),
     "structure step 1 of 1 (early exits ''): malformed step: input_shape: must be a list of 1 to 4 sizes"),
    (lambda s: steps(s)[0].update(input_shape=[3, 65536, 65536]),
     "structure step 1 of 1 (early exits ''): malformed step: input_shape: holds 12,884,901,888 values per "
     "sample"),
    (lambda s: steps(s)[0].update(num_classes="ten"),
     "structure step 1 of 1 (early exits ''): malformed step: num_classes: must be an integer"),
    (lambda s: s["state_dict"]["early_exits._extra_state"].update(criteria=[{"name": "entropy"}]),
     "the saved exits' criteria must be a list of names"),
    (lambda s: s["state_dict"].__setitem__("fc1.bias", torch.full((500,), float("inf"))),
     "the weights are not finite (fc1.bias)"),
    (lambda s: steps(s)[0].update(input_shape=[3, 32, 32]),
     "structure step 1 of 1 records the input shape [3, 32, 32], not the checkpoint's [1, 28, 28]"),
    (lambda s: (s.pop("input_shape"), steps(s)[0].update(input_shape=[2, 28, 28])),
     "structure step 1 of 1 (early exits ''): cannot be rebuilt on this model (Given groups=1, weight of size"),
    (lambda s: s.update(structure=7), "malformed checkpoint: 'structure' must be a list of structure steps, got int"),
])
def test_a_malformed_checkpoint_is_refused_before_anything_is_built(edit, message, exits_checkpoint, capsys,
                                                                     tmp_path):
    path = edited(exits_checkpoint, tmp_path, edit)
    got = refused(["--arch", "lenet_mnist", "--resume-from", path, "--evaluate", "--no-timing"], capsys,
                  tmp_path / "runs")
    assert got.startswith(f"{path}: ") and message in got, got


def test_a_legacy_exit_record_of_the_wrong_type_is_one_line(exits_checkpoint, capsys, tmp_path):
    def legacy(state):
        del state["structure"]
        state["early_exit"] = {"config": ["not", "a", "mapping"]}

    path = edited(exits_checkpoint, tmp_path, legacy)
    got = refused(["--arch", "lenet_mnist", "--resume-from", path, "--evaluate"], capsys, tmp_path / "runs")
    assert "the early-exit record's 'config' must be a mapping of exits" in got


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint with optimizer state (momentum buffers), as training writes it."""
    out = tmp_path_factory.mktemp("trained")
    assert main(["--arch", "lenet_mnist", "--compress", str(SCHEDULE), "--epochs", "1", "-b", "256", "--lr", "0.02",
                 "--seed", "0", "--no-timing", "-o", str(out), "-n", "t", "-p", "1000"]) == 0
    return next(out.glob("t___*")) / "checkpoint.pth.tar"


@pytest.mark.slow
def test_optimizer_state_of_the_wrong_shape_is_refused_before_training(trained, capsys, tmp_path):
    def shrink(state):
        for values in state["optimizer"]["state"].values():
            values["momentum_buffer"] = values["momentum_buffer"].flatten()[:7]
            return

    path = edited(trained, tmp_path, shrink)
    got = refused(["--arch", "lenet_mnist", "--compress", str(SCHEDULE), "--resume-from", path, "--epochs", "2"],
                  capsys, tmp_path / "runs")
    assert "optimizer state does not fit ('momentum_buffer' of parameter 0 has shape (7,)" in got
    assert got.endswith("use --reset-optimizer")


@pytest.mark.slow
def test_post_training_quantization_of_a_quantization_aware_checkpoint_says_what_to_do(capsys, tmp_path):
    model = create_model("lenet_mnist", 10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = load_schedule(model, optimizer, str(QAT), example_input=torch.zeros(1, 1, 28, 28))
    path = tmp_path / "qat.pth.tar"
    save_checkpoint(path, model, optimizer=optimizer, scheduler=scheduler, arch="lenet_mnist", dataset="mnist5k",
                    epoch=0)
    got = refused(["--arch", "lenet_mnist", "--resume-from", str(path), "--evaluate", "--qe"], capsys,
                  tmp_path / "runs")
    assert got.startswith("--quantize-eval: the model is quantized already") and "without --quantize-eval" in got


def test_an_out_dir_that_is_a_dangling_link_is_one_line(capsys, tmp_path):
    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "gone")
    code = main(["--epochs", "1", "-o", str(link)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: -o/--out-dir {link}: is a symbolic link to {tmp_path / 'gone'}, which does "
                                 "not exist"]
    assert not (tmp_path / "gone").exists()
