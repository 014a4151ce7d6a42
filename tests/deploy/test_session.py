"""Real early exit on ONNX Runtime: the exported stages, branches and deciders give PyTorch's outputs and exits."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_ee.deploy import ManifestError, MultiExitSession
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.onnx_export import export_onnx
from deploy_support import HEAD, Skip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def exported(tmp_path, config, name="model"):
    torch.manual_seed(0)
    model = Skip().eval()
    exits = EarlyExits.from_config(config, model, num_classes=10, input_shape=(1, 12, 12))
    export_onnx(exits.multi_exit_model().eval(), model, tmp_path / name)
    return model, exits, MultiExitSession(tmp_path / name)


def midpoint_thresholds(scores, share):
    """Thresholds halfway between two samples' scores (never equal to one: no float ties between runtimes)."""
    out = []
    for s in scores:
        v = np.sort(s)
        i = int(share * len(v))
        out.append(float((v[i] + v[i + 1]) / 2))
    return out


TWO_EXITS = {"exits": {"e1": {"attach": "r1", "branch": HEAD}, "e2": {"attach": "r2", "branch": HEAD}}}


@pytest.fixture(scope="module")
def entropy_model(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("onnx"), TWO_EXITS)


def test_every_exit_matches_pytorch_within_1e_4(entropy_model):
    model, exits, session = entropy_model
    x = torch.randn(50, 1, 12, 12)
    with torch.no_grad():
        want = exits.multi_exit_model().eval().simulate(x)
    got = session.simulate(x.numpy())
    assert [g.shape for g in got] == [(50, 10)] * 3
    assert max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)) < 1e-4
    with torch.no_grad():
        assert np.abs(session.backbone(x.numpy()) - model(x).numpy()).max() < 1e-4


def test_real_early_exit_takes_the_same_exits_as_pytorch_and_shrinks_the_batch(entropy_model):
    _, exits, session = entropy_model
    x = torch.randn(200, 1, 12, 12)
    with torch.no_grad():
        logits = exits.multi_exit_model().eval().simulate(x)
    entropies = [-(z.softmax(1) * z.log_softmax(1)).sum(1).numpy() for z in logits[:-1]]
    thresholds = midpoint_thresholds(entropies, 0.4)
    exits.set_thresholds(thresholds)
    session.set_thresholds(thresholds)
    rows = []
    final = session.stages[2]
    session.stages[2] = type("Counting", (), {"run": lambda self, names, feeds: rows.append(
        next(iter(feeds.values())).shape[0]) or final.run(names, feeds)})()
    try:
        got, got_index = session(x.numpy())
    finally:
        session.stages[2] = final
    with torch.no_grad():
        want, want_index = exits.multi_exit_model().eval()(x)
    assert (got_index == want_index.numpy()).all()
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert rows == [int((got_index == 2).sum())] and 0 < rows[0] < 200  # the last stage ran on the rest only
    for i in (0, 7, 100):
        one, index = session(x[i:i + 1].numpy())
        assert index[0] == got_index[i] and np.abs(one[0] - got[i]).max() < 1e-5


def test_an_exit_without_threshold_is_never_taken_and_its_branch_not_run(entropy_model):
    _, _, session = entropy_model
    session.set_thresholds({"e1": None, "e2": 1e9})
    called = []
    branch = session.exits[0]
    session.exits[0] = type("Spy", (), {"run": lambda self, *a: called.append(1) or branch.run(*a)})()
    try:
        _, index = session(np.random.randn(8, 1, 12, 12).astype(np.float32))
    finally:
        session.exits[0] = branch
    assert (index == 1).all() and called == []
    with pytest.raises(ValueError, match="no exit named 'e3'"):
        session.set_thresholds({"e3": 0.1})


@pytest.mark.parametrize("config", [
    {**TWO_EXITS, "criterion": "max_prob"},
    {**TWO_EXITS, "criterion": "margin"},
    {**TWO_EXITS, "criterion": "patience", "patience": 1},
    {**TWO_EXITS, "criterion": "gate"},
], ids=["max_prob", "margin", "patience", "gate"])
def test_every_criterion_decides_as_in_pytorch(tmp_path, config):
    _, exits, session = exported(tmp_path, config)
    x = torch.randn(120, 1, 12, 12)
    if config["criterion"] in ("max_prob", "margin"):
        with torch.no_grad():
            logits = exits.multi_exit_model().eval().simulate(x)
        crit = exits.multi_exit_model().criteria
        scores = [crit[k].confidence(z).numpy() for k, z in enumerate(logits[:-1])]
        thresholds = midpoint_thresholds(scores, 0.5)
        exits.set_thresholds(thresholds)
        session.set_thresholds(thresholds)
    assert session.thresholds == exits.thresholds
    with torch.no_grad():
        _, want = exits.multi_exit_model().eval()(x)
    _, got = session(x.numpy())
    assert (got == want.numpy()).all()


def test_the_runtime_imports_and_runs_without_torch(entropy_model, tmp_path):
    directory = Path(entropy_model[2].manifest.directory)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "import numpy as np\n"
            "from distill_ee.deploy import MultiExitSession\n"
            f"s = MultiExitSession({str(directory)!r})\n"
            "logits, index = s(np.zeros((3, 1, 12, 12), np.float32))\n"
            "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
            "print(logits.shape, index.shape)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(3, 10) (3,)"


def test_forward_transfer_exits_are_refused(tmp_path):
    with pytest.raises(Exception, match="forward_transfer"):
        exported(tmp_path, {**TWO_EXITS, "forward_transfer": True})


def copy_export(entropy_model, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(entropy_model[2].manifest.directory, target)
    return target


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="something"), "format: expected 'distill_ee.multi_exit.onnx'"),
    (lambda m: m.update(version=9), "version: this runtime reads version 3, got 9"),
    (lambda m: m.update(version=1), "version: written by an earlier distill_ee (version 1"),
    (lambda m: m.update(version=2), "version: written by an earlier distill_ee (version 2, without a record of its"),
    (lambda m: m["thresholds"].__setitem__(0, "high"), "thresholds[0]: must be a finite number or null, got 'high'"),
    (lambda m: m["leave"].__setitem__(1, "belwo"), "leave[1]: unknown leave rule 'belwo'; did you mean 'below'?"),
    (lambda m: m["criteria"].__setitem__(1, 7), "criteria[1]: must be a criterion's name, got 7"),
    (lambda m: m["stages"].__setitem__(1, "missing.onnx"), "stages[1]: missing.onnx is not in"),
    (lambda m: m["stages"].__setitem__(1, "../stage1.onnx"), "stages[1]: must be a file name in the export"),
    (lambda m: m["branches"].pop(), "branches: must have 2 entries (one per exit), got 1"),
    (lambda m: m["plan"]["attach"].__setitem__(0, 99), "plan.attach[0]: slot 99 is not in 0..3"),
    (lambda m: m["plan"].pop("carry"), "plan.carry: missing"),
    (lambda m: m.update(num_classes=0), "num_classes: must be a positive integer, got 0"),
])
def test_a_malformed_manifest_is_one_located_error(entropy_model, tmp_path, edit, message):
    directory = copy_export(entropy_model, tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as err:
        MultiExitSession(directory)
    text = str(err.value)
    assert text.startswith(f"{directory / 'manifest.json'}: ") and message in text and "\n" not in text


def test_a_missing_or_damaged_export_says_so(entropy_model, tmp_path):
    with pytest.raises(ManifestError, match="cannot be read"):
        MultiExitSession(tmp_path / "nowhere")
    directory = copy_export(entropy_model, tmp_path)
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not JSON"):
        MultiExitSession(directory)
    (directory / "manifest.json").write_text(json.dumps(json.loads(
        (Path(entropy_model[2].manifest.directory) / "manifest.json").read_text())))
    (directory / "stage1.onnx").write_bytes(b"garbage")
    with pytest.raises(ManifestError, match="stage1.onnx: its SHA-256 differs from the manifest's"):
        MultiExitSession(directory)
