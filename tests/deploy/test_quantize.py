"""Post-training int8 of an ONNX export: integer kernels on ONNX Runtime, exits taken for real on them."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from distill_ee.deploy import MultiExitSession
from distill_ee.leave_rules import LEAVE_RULES
from distill_ee.deploy.quantize import calibration_feeds, quantize_export
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.onnx_export import export_onnx

pytestmark = pytest.mark.slow


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    torch.manual_seed(0)
    model = Net().eval()
    exits = EarlyExits.from_config({"exits": {"e1": {"attach": "c1", "branch": ["adaptive_avgpool", "flatten",
                                                                             "linear"], "threshold": 2.2}}},
                                   model, num_classes=10, input_shape=(1, 12, 12))
    root = tmp_path_factory.mktemp("q")
    export_onnx(exits.multi_exit_model().eval(), model, root / "fp32")
    images = np.random.RandomState(0).randn(96, 1, 12, 12).astype(np.float32)
    quantize_export(root / "fp32", root / "int8", images[:64])
    return root, images


def test_every_file_is_calibrated_on_the_values_it_receives(exports):
    root, images = exports
    feeds = calibration_feeds(MultiExitSession(root / "fp32"), images[:64], batch_size=32)
    assert set(feeds) == {"backbone.onnx", "stage0.onnx", "stage1.onnx", "exit0.onnx", "branch0.onnx"}
    assert len(feeds["stage1.onnx"]) == 2 and feeds["stage1.onnx"][0]["slot1"].shape == (32, 16, 12, 12)
    assert feeds["branch0.onnx"][0]["features"].shape == (32, 16, 12, 12)


def test_the_int8_export_runs_integer_kernels_close_to_float(exports):
    import onnx

    root, images = exports
    graph = onnx.load(str(root / "int8" / "stage1.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert [list(w.dims) for w in weights] == [[32, 16, 3, 3]]  # conv2's weights, stored as int8
    fp32, int8 = MultiExitSession(root / "fp32"), MultiExitSession(root / "int8")
    for a, b in zip(fp32.simulate(images), int8.simulate(images)):
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 1e-3  # uint8 activations: about 1% of the range
    manifest = json.loads((root / "int8" / "manifest.json").read_text())
    assert manifest["quantization"]["weights"] == "int8" and manifest["quantization"]["per_channel"] is True
    floats = [i for i in onnx.load(str(root / "fp32" / "stage1.onnx")).graph.initializer if len(i.dims) == 4]
    assert len(weights[0].raw_data) * 4 == len(floats[0].raw_data)  # 4x smaller weights


def test_real_early_exit_on_the_int8_files_equals_their_simulation(exports):
    root, images = exports
    session = MultiExitSession(root / "int8")
    logits, scores = session.simulate_scores(images)
    ranked = np.sort(scores[0])
    session.set_thresholds([float((ranked[47] + ranked[48]) / 2)])  # half of the samples leave
    leave = LEAVE_RULES[session.manifest.leave[0]].leaves(scores[0], session.thresholds[0])
    want = np.where(leave, 0, 1)
    got_logits, got = session(images)
    assert 0 < leave.sum() < len(images)
    assert (got == want).all()
    assert np.abs(got_logits - np.where(leave[:, None], logits[0], logits[1])).max() < 1e-4


def test_files_can_stay_in_float(exports, tmp_path):
    root, images = exports
    quantize_export(root / "fp32", tmp_path, images[:32], exclude=["branch0.onnx"])
    assert (tmp_path / "branch0.onnx").read_bytes() == (root / "fp32" / "branch0.onnx").read_bytes()
    assert json.loads((tmp_path / "manifest.json").read_text())["quantization"]["float"] == ["branch0.onnx"]
    with pytest.raises(ValueError, match="uint8 or int8"):
        quantize_export(root / "fp32", tmp_path / "x", images[:8], activations="int4")
