"""The export directory is verified, not trusted: every hostile or careless change is one ManifestError line."""
import hashlib
import json
import os
import shutil
import threading
import tracemalloc

import numpy as np
import pytest
import torch

from distill_ee.deploy import ManifestError, MultiExitSession
from distill_ee.early_exit import EarlyExits
from distill_ee.early_exit.onnx_export import export_onnx
from deploy_support import HEAD, Skip
from support import no_hang

pytestmark = pytest.mark.slow

EXITS = {"exits": {"e1": {"attach": "r1", "branch": HEAD}, "e2": {"attach": "r2", "branch": HEAD}}}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The intact export (thresholds that let about half of the samples leave at each exit) and a batch."""
    torch.manual_seed(0)
    model = Skip().eval()
    exits = EarlyExits.from_config(EXITS, model, num_classes=10, input_shape=(1, 12, 12))
    directory = tmp_path_factory.mktemp("verified") / "onnx"
    export_onnx(exits.multi_exit_model().eval(), model, directory)
    x = np.random.RandomState(0).randn(16, 1, 12, 12).astype(np.float32)
    session = MultiExitSession(directory)
    session.set_thresholds([float(np.median(s)) for s in session.simulate_scores(x)[1]])
    session.manifest.write()
    return directory, x


@pytest.fixture
def copy(export, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(export[0], target)
    return target


def manifest_of(directory):
    return json.loads((directory / "manifest.json").read_text())


def write(directory, manifest):
    (directory / "manifest.json").write_text(json.dumps(manifest))


def swap(directory, a, b):
    (directory / a).rename(directory / "tmp")
    (directory / b).rename(directory / a)
    (directory / "tmp").rename(directory / b)


def refused(directory, *parts):
    """MultiExitSession(directory) raises one ManifestError line, starting with the manifest's path, without a
    chained traceback, naming every one of ``parts``."""
    with no_hang(), pytest.raises(ManifestError) as err:
        MultiExitSession(directory)
    text = str(err.value)
    assert text.startswith(f"{directory / 'manifest.json'}") and "\n" not in text, text
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
    for part in parts:
        assert part in text, text
    return text


def test_the_manifest_records_every_file_it_names(export):
    directory, x = export
    manifest = manifest_of(directory)
    assert manifest["version"] == 3
    names = [*manifest["stages"], *manifest["branches"], *manifest["exits"], manifest["backbone"]]
    assert sorted(manifest["files"]) == sorted(names)
    for name in names:
        assert manifest["files"][name]["sha256"] == hashlib.sha256((directory / name).read_bytes()).hexdigest()
    assert manifest["files"]["stage2.onnx"]["inputs"] == [
        {"name": "slot1", "type": "float", "shape": [None, 8, 12, 12]},
        {"name": "slot2", "type": "float", "shape": [None, 8, 12, 12]}]
    assert manifest["files"]["exit0.onnx"]["outputs"] == [
        {"name": "slot1", "type": "float", "shape": [None, 8, 12, 12]},
        {"name": "logits", "type": "float", "shape": [None, 10]}, {"name": "score", "type": "float", "shape": [None]}]
    logits, index = MultiExitSession(directory)(x)
    assert logits.shape == (16, 10) and 0 < (index == 0).sum() < 16  # the intact export loads and runs


def test_swapped_stage_files_are_refused(copy):
    swap(copy, "stage0.onnx", "stage1.onnx")
    refused(copy, "stage0.onnx: its SHA-256 differs from the manifest's (the file was replaced or damaged")


def test_a_stage_swapped_with_its_fused_exit_is_refused_however_the_manifest_is_edited(copy):
    swap(copy, "stage1.onnx", "exit1.onnx")
    refused(copy, "stage1.onnx: its SHA-256 differs")
    manifest = manifest_of(copy)
    files = manifest["files"]
    files["stage1.onnx"]["sha256"], files["exit1.onnx"]["sha256"] = (files["exit1.onnx"]["sha256"],
                                                                      files["stage1.onnx"]["sha256"])
    write(copy, manifest)  # the hashes made to match: the graphs still differ from their records
    refused(copy, "stage1.onnx: its graph's outputs", "differ from the manifest's record")
    files["stage1.onnx"], files["exit1.onnx"] = files["exit1.onnx"], files["stage1.onnx"]
    write(copy, manifest)  # the whole records swapped too: they no longer fit the plan
    refused(copy, "stages[1]: stage1.onnx reads ['slot1'] and writes ['slot2', 'logits', 'score'] (its record)")


def test_a_wrong_result_slot_is_refused(copy):
    manifest = manifest_of(copy)
    manifest["plan"]["result"] = 2
    write(copy, manifest)
    refused(copy, "plan.result: slot 2 is not an output of the last stage")


def test_a_slot_naming_the_wrong_input_is_refused(copy):
    manifest = manifest_of(copy)
    manifest["plan"]["inputs"][1] = [0]
    write(copy, manifest)
    refused(copy, "plan.inputs[1]: slot 0 is read after plan.free[0] frees it")
    manifest["plan"]["free"][0] = []
    write(copy, manifest)
    refused(copy, "stages[1]: stage1.onnx reads ['slot1']", "the plan wants ['slot0']")


def test_a_slot_never_written_is_refused(copy):
    manifest = manifest_of(copy)
    manifest["plan"]["num_slots"] = 5
    manifest["plan"]["inputs"][2] = [1, 4]
    write(copy, manifest)
    refused(copy, "plan.inputs[2]: slot 4 is read before any stage writes it")


def test_a_slot_not_carried_across_an_exit_is_refused(copy):
    manifest = manifest_of(copy)
    manifest["plan"]["carry"][1] = [2]
    write(copy, manifest)
    refused(copy, "plan.carry[1]: slot 1, read by stage 2, is not carried")


def test_a_huge_slot_count_is_refused_before_anything_is_allocated(copy):
    manifest = manifest_of(copy)
    manifest["plan"]["num_slots"] = 10 ** 12
    write(copy, manifest)
    tracemalloc.start()
    try:
        refused(copy, "plan.num_slots: at most 4096 slots, got 1000000000000")
        assert tracemalloc.get_traced_memory()[1] < 64 * 2 ** 20
        manifest["plan"]["num_slots"] = 4
        manifest["exit_names"] = [f"e{i}" for i in range(10 ** 5)]
        write(copy, manifest)
        tracemalloc.reset_peak()
        refused(copy, "exit_names: at most 256 exits, got 100000")
        assert tracemalloc.get_traced_memory()[1] < 64 * 2 ** 20  # the manifest's text and parse, nothing more
    finally:
        tracemalloc.stop()


def test_a_truncated_file_is_refused(copy):
    data = (copy / "exit0.onnx").read_bytes()
    (copy / "exit0.onnx").write_bytes(data[:len(data) // 2])
    refused(copy, "exit0.onnx: its SHA-256 differs from the manifest's")
    manifest = manifest_of(copy)
    manifest["files"]["exit0.onnx"]["sha256"] = hashlib.sha256(data[:len(data) // 2]).hexdigest()
    write(copy, manifest)  # the hash made to match: ONNX Runtime's refusal is one line too
    refused(copy, "exit0.onnx: ONNX Runtime cannot load it")


def test_a_foreign_onnx_file_with_the_right_names_is_refused(copy):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["features"], ["logits"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph([node], "foreign",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(copy / "branch1.onnx"))
    refused(copy, "branch1.onnx: its SHA-256 differs")


def test_records_that_differ_from_the_graphs_are_refused(copy):
    manifest = manifest_of(copy)
    for name, record in manifest["files"].items():
        for value in record["inputs"] + record["outputs"]:
            if value["name"] == "slot1" or (name == "branch0.onnx" and value["name"] == "features"):
                value["type"] = "double"  # consistent across the files, but not what the graphs hold
    write(copy, manifest)
    refused(copy, "stage0.onnx: its graph's outputs ('slot1': 'float' [?, 8, 12, 12]) differ from the manifest's "
                  "record ('slot1': 'double' [?, 8, 12, 12])")


def test_a_logits_width_other_than_num_classes_is_refused(copy):
    manifest = manifest_of(copy)
    manifest["num_classes"] = 7
    write(copy, manifest)
    refused(copy, "not the float logits of 7 classes")


def test_a_manifest_that_is_a_device_or_a_directory_is_refused(copy):
    (copy / "manifest.json").unlink()
    (copy / "manifest.json").symlink_to("/dev/zero")
    refused(copy, "is not a regular file (a character device)")
    (copy / "manifest.json").unlink()
    (copy / "manifest.json").mkdir()
    refused(copy, "is not a regular file (a directory)")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_manifest_that_is_a_fifo_is_refused_without_blocking(copy):
    (copy / "manifest.json").unlink()
    os.mkfifo(copy / "manifest.json")
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(copy)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO manifest blocked"
    assert isinstance(outcome[0], ManifestError) and "is not a regular file (a FIFO or pipe)" in str(outcome[0])
    assert "\n" not in str(outcome[0])


def _error_of(directory):
    try:
        MultiExitSession(directory)
    except Exception as err:  # the test checks the type
        return err
    return None


def test_a_manifest_that_is_not_json_names_the_line(copy):
    (copy / "manifest.json").write_text('{\n  "format": "distill_ee.multi_exit.onnx",\n  "version": 3,,\n}')
    refused(copy, "manifest.json:3: not JSON (Expecting property name enclosed in double quotes, column")
    (copy / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    refused(copy, "not JSON")


def test_a_slot_carried_twice_is_refused(copy):
    manifest = manifest_of(copy)
    manifest["plan"]["carry"][1] = [1, 2, 2]  # it would be shrunk twice: wrong rows, no error
    write(copy, manifest)
    refused(copy, "plan.carry[1]: slot 2 is listed twice")


def test_branches_of_one_shape_cannot_trade_places(copy):
    manifest = manifest_of(copy)
    manifest["branches"].reverse()
    write(copy, manifest)
    refused(copy, "branches[0]: must be branch0.onnx, the name the export gives it, got branch1.onnx")


def test_a_file_named_twice_is_refused(copy):
    manifest = manifest_of(copy)
    manifest["stages"][1] = "exit1.onnx"
    write(copy, manifest)
    refused(copy, "exits[1]: exit1.onnx is also stages[1]: every file has one role")
