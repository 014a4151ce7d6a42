"""A criterion a plugin writes travels: declared once (a score and a leave rule), it trains and decides in
PyTorch, exports to ONNX and takes the same exits on ONNX Runtime; one that decides in an ``exit_mask`` of its
own is refused at export with one line, before any file is written (through the app: before training)."""
import numpy as np
import pytest
import torch
from torch import nn

from distill_ee.apputils.app import main
from distill_ee.components import load_components
from distill_ee.deploy import MultiExitSession
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.criteria import ExitCriterion
from distill_ee.early_exit.onnx_export import export_onnx
from distill_ee.early_exit.tradeoff import criterion_threshold
from distill_ee.errors import DistillEEError
from distill_ee.registry import EXIT_CRITERIA

pytestmark = pytest.mark.slow

HEAD = ["adaptive_avgpool", "flatten", "linear"]


class LogitGap(ExitCriterion):
    """Leave when the two largest logits are far enough apart (no softmax: a rule a plugin might bring)."""

    name = "logit_gap"
    leave = "at_least"

    def score(self, logits):
        top = logits.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]


class Oracle(ExitCriterion):
    """Decides in an exit_mask of its own and declares no rule: fine in PyTorch, not exportable."""

    name = "coin"

    def confidence(self, logits):
        return logits.amax(dim=1)

    def exit_mask(self, logits, threshold, state=None):
        return (logits.amax(dim=1) * 1000).long() % 2 == 0


@pytest.fixture
def plugin_criteria():
    load_components()
    EXIT_CRITERIA.add("logit_gap", LogitGap)
    EXIT_CRITERIA.add("coin", Oracle)
    try:
        yield
    finally:
        EXIT_CRITERIA.remove("logit_gap")
        EXIT_CRITERIA.remove("coin")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.r2(self.c2(self.r1(self.c1(x)))).mean(dim=(2, 3)))


def with_exits(criterion):
    torch.manual_seed(0)
    model = Net().eval()
    config = {"criterion": criterion, "exits": {"e1": {"attach": "r1", "branch": HEAD},
                                                "e2": {"attach": "r2", "branch": HEAD}}}
    return model, EarlyExits.from_config(config, model, num_classes=10, input_shape=(1, 12, 12))


def test_a_plugin_criterion_exports_and_deploys_with_the_same_exits(plugin_criteria, tmp_path):
    model, exits = with_exits("logit_gap")
    x = torch.randn(256, 1, 12, 12)
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        gaps = [LogitGap().score(z) for z in multi.simulate(x)[:-1]]
    # thresholds between two samples' scores, so that no sample sits on one (float noise between runtimes)
    thresholds = []
    for g, share in zip(gaps, (0.4, 0.5)):
        v = g.sort().values
        i = int(share * len(v))
        thresholds.append(float((v[i] + v[i + 1]) / 2))
    exits.set_thresholds(thresholds)
    export_onnx(multi, model, tmp_path / "onnx")
    session = MultiExitSession(tmp_path / "onnx")
    assert session.manifest.leave == ["at_least", "at_least"] and session.criteria == ["logit_gap", "logit_gap"]
    assert session.thresholds == exits.thresholds
    with torch.no_grad():
        _, want = multi(x)
    _, got = session(x.numpy())
    assert 0 < int((want == 0).sum()) < 256 and int((want == 2).sum()) > 0  # every exit takes samples
    assert (got == want.numpy()).all()
    one = [int(session(x[i:i + 1].numpy())[1][0]) for i in range(16)]
    assert one == want[:16].tolist()


def test_a_plugin_criterion_is_calibrated_through_its_rule(plugin_criteria):
    criterion = LogitGap()
    logits = torch.randn(50, 10) * 3
    cut = float(criterion.confidence(logits).median())
    assert torch.equal(criterion.exit_mask(logits, criterion_threshold(criterion, cut)),
                       criterion.confidence(logits) > cut)


def test_an_unexportable_criterion_is_refused_with_one_line(plugin_criteria, tmp_path):
    model, exits = with_exits("coin")
    multi = exits.multi_exit_model().eval()
    with torch.no_grad():
        multi(torch.randn(4, 1, 12, 12))  # it runs in PyTorch
    with pytest.raises(DistillEEError) as err:
        export_onnx(multi, model, tmp_path / "onnx")
    message = str(err.value)
    assert message == ("exit 'e1': the coin criterion cannot be exported to ONNX: it declares no leave rule (set "
                       "`leave` to one of below, at_least, above, agree)")
    assert not (tmp_path / "onnx").exists()


def test_the_app_refuses_an_unexportable_criterion_before_training(plugin_criteria, tmp_path, capsys):
    schedule = tmp_path / "s.yaml"
    schedule.write_text("""
version: 1
early_exits:
  branchy:
    class: EarlyExit
    criterion: coin
    exits:
      exit1: {attach: conv1, branch: [relu, adaptive_avgpool, flatten, linear], threshold: 0.5}
policies:
  - early_exit: {instance_name: branchy}
    starting_epoch: 0
    ending_epoch: 1
""")
    code = main(["--arch", "lenet_mnist", "--compress", str(schedule), "--epochs", "1", "--ee-export", "onnx",
                 "-o", str(tmp_path / "runs"), "--no-timing"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].endswith("--ee-export onnx: exit 'exit1': the coin criterion cannot be exported to ONNX: it "
                            "declares no leave rule (set `leave` to one of below, at_least, above, agree)")
    assert not list((tmp_path / "runs").glob("*/checkpoint.pth.tar"))


def test_the_built_in_criteria_declare_what_travels():
    load_components()
    for name in EXIT_CRITERIA.names():
        criterion = EXIT_CRITERIA.get(name)()
        assert criterion.export_problem() is None, name
    assert np.array_equal(EXIT_CRITERIA.get("entropy")().rule.leaves(np.array([0.1, 0.9]), 0.5), [True, False])
