"""TorchScript export: stage and branch files plus a manifest; the loaded driver exits like the original."""
import json

import torch

from distill_ee.early_exit.export import MANIFEST, export_torchscript, load_exported
from distill_ee.early_exit.multi_exit import MultiExitModel


def exported_pair(ee, model, attach_points, shape, tmp_path, branch=None):
    exits = ee.attach(model, ee.exits_config(attach_points, branch=branch), input_shape=shape).exit_set
    multi = MultiExitModel.from_model(model, exits, "entropy").eval()
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(3))
    entropies = [multi.criteria[0].entropy(l).sort().values for l in multi.simulate(x)[:-1]]
    multi.set_thresholds([float((h[9] + h[10]) / 2) for h in entropies])
    paths = export_torchscript(multi, tmp_path)
    return multi, load_exported(tmp_path), x, paths


def test_export_writes_each_stage_and_branch_and_a_manifest(ee, lenet, tmp_path):
    multi, _, _, paths = exported_pair(ee, lenet, ["conv1", "conv2"], (1, 28, 28), tmp_path,
                                       branch=["flatten", "linear"])
    assert sorted(p.name for p in paths) == sorted(["stage0.pt", "stage1.pt", "stage2.pt", "branch0.pt",
                                                    "branch1.pt", MANIFEST])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["exit_names"] == ["exit1", "exit2"]
    assert manifest["criteria"] == ["entropy", "entropy"]
    assert manifest["thresholds"] == multi.thresholds


def test_the_exported_driver_matches_the_multi_exit_model(ee, resnet_cifar, tmp_path):
    multi, loaded, x, _ = exported_pair(ee, resnet_cifar, ["layer1", "layer2.0.bn2"], (3, 32, 32), tmp_path)
    logits, index = multi(x)
    loaded_logits, loaded_index = loaded(x)
    assert torch.equal(loaded_index, index)
    assert 0 < int((index == 0).sum()) < 32 and int((index == 2).sum()) > 0
    assert torch.equal(loaded_logits.argmax(1), logits.argmax(1))
    assert torch.allclose(loaded_logits, logits, atol=1e-5)
    for i in (0, 5, 17):
        one_logits, one_index = loaded(x[i:i + 1])
        assert one_index.tolist() == [int(index[i])]
        assert torch.allclose(one_logits, logits[i:i + 1], atol=1e-5)


def test_the_loaded_modules_are_torchscript(ee, lenet, tmp_path):
    _, loaded, _, _ = exported_pair(ee, lenet, ["conv2"], (1, 28, 28), tmp_path, branch=["flatten", "linear"])
    assert all(isinstance(m, torch.jit.ScriptModule) for m in [*loaded.stages, *loaded.branches])
    assert not loaded.training
