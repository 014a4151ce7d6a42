"""Checkpoints: written atomically, read back with weights_only=True, and restored by one call that replays the
model's structure steps (exits, thinning) before loading the weights."""
import os
import pickle
from pathlib import Path

import pytest
import torch

from distill_ee import EarlyExits, load_schedule, structure_steps
from distill_ee.apputils.models import create_model
from distill_ee.checkpoint import (checkpoint_state, load_checkpoint, read_checkpoint, save_checkpoint,
                                   write_checkpoint)
from distill_ee.errors import CheckpointError
from distill_ee.thinning import remove_filters
from support import one_epoch_of_one_step


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_round_trip_of_tensors_and_plain_values(tmp_path):
    path = tmp_path / "c.pth.tar"
    write_checkpoint(path, {"epoch": 3, "w": torch.arange(4.0), "meta": {"arch": "lenet_mnist"}})
    state = read_checkpoint(path)
    assert state["epoch"] == 3 and state["meta"] == {"arch": "lenet_mnist"}
    assert torch.equal(state["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["c.pth.tar"]


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load: the checkpoint carries pickled Python objects"):
        read_checkpoint(path)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "c.pth.tar"
    write_checkpoint(path, {"epoch": 1})

    class Unsavable:
        def __reduce__(self):
            raise pickle.PicklingError("cannot save")

    with pytest.raises(Exception):
        write_checkpoint(path, {"epoch": 2, "bad": Unsavable()})
    assert read_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["c.pth.tar"]


def test_missing_and_garbage_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "nope.pth.tar")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_checkpoint(junk)


# --------------------------------------------------------------------------- structure + weights, one call
SCHEDULES = Path(__file__).resolve().parents[1] / "schedules"
AGP_THINNING = SCHEDULES / "resnet20_cifar.agp_filters_thinning.yaml"  # two exits + AGP filters + thinning


def trained_through_thinning(epochs=31):
    """resnet20_cifar under the ready exits + AGP + thinning schedule, epoch hooks and one step per epoch."""
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = load_schedule(model, optimizer, str(AGP_THINNING), example_input=torch.zeros(1, 3, 32, 32))
    gen = torch.Generator().manual_seed(1)
    for epoch in range(epochs):
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    return model, optimizer, scheduler


@pytest.fixture(scope="module")
def thinned_run(tmp_path_factory):
    model, optimizer, scheduler = trained_through_thinning()
    EarlyExits.of(model).set_thresholds([0.8, 1.2])  # as a calibration would
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth.tar"
    save_checkpoint(path, model, optimizer=optimizer, scheduler=scheduler, epoch=30, arch="resnet20_cifar")
    return model.eval(), path


def images(n=16):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_a_checkpoint_after_exits_agp_and_thinning_restores_into_a_fresh_zoo_model(thinned_run):
    trained, path = thinned_run
    assert [s["kind"] for s in structure_steps(trained)] == ["early_exits", "thinning"]
    fresh = create_model("resnet20_cifar", 10, 3)
    restored = load_checkpoint(fresh, path)
    assert restored.epoch == 30 and restored.get("arch") == "resnet20_cifar"
    assert fresh.layer1[0].conv1.out_channels == 8 and fresh.early_exits.exit1[0].in_channels == 16
    x = images()
    assert torch.equal(fresh.eval()(x), trained(x))
    mine, theirs = EarlyExits.of(fresh).multi_exit_model().eval(), EarlyExits.of(trained).multi_exit_model().eval()
    assert mine.thresholds == [0.8, 1.2]
    (logits, index), (want, want_index) = mine(x), theirs(x)
    assert torch.equal(index, want_index) and torch.equal(logits, want)
    assert [s["kind"] for s in structure_steps(fresh)] == ["early_exits", "thinning"]


def test_under_its_own_schedule_the_checkpoint_replays_only_what_the_schedule_did_not(thinned_run):
    trained, path = thinned_run
    torch.manual_seed(3)
    model = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = load_schedule(model, optimizer, str(AGP_THINNING), example_input=torch.zeros(1, 3, 32, 32))
    restored = load_checkpoint(model, path, optimizer=optimizer, scheduler=scheduler)
    assert restored.replayed == [None]  # the thinning step; the schedule had attached the exits already
    assert [s["kind"] for s in structure_steps(model)] == ["early_exits", "thinning"]
    assert torch.equal(model.eval()(images()), trained(images()))
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}  # thinning swapped the new parameters in
    assert all(scheduler.masks[n].mask is None or scheduler.masks[n].mask.shape == p.shape
               for n, p in model.named_parameters())


def test_exits_a_schedule_adds_to_a_thinned_dense_checkpoint_are_rebuilt_on_the_thinned_model(tmp_path):
    torch.manual_seed(0)
    dense = create_model("resnet20_cifar", 10, 3)
    with torch.no_grad():
        dense.layer1[0].conv1.weight[:8] = 0.0
    remove_filters(dense)
    path = tmp_path / "dense.pth.tar"
    save_checkpoint(path, dense)
    model = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = load_schedule(model, optimizer, str(SCHEDULES / "resnet20_cifar.earlyexit.yaml"),
                              example_input=torch.zeros(1, 3, 32, 32))
    before = {id(p) for p in EarlyExits.of(model).branch_parameters()}
    load_checkpoint(model, path, optimizer=optimizer, scheduler=scheduler, strict_schedule=False)
    assert [s["kind"] for s in structure_steps(model)] == ["thinning", "early_exits"]
    assert model.layer1[0].conv1.out_channels == 8
    multi = EarlyExits.of(model).multi_exit_model().eval()
    assert multi(images(4))[0].shape == (4, 10)
    branches = {id(p) for p in EarlyExits.of(model).branch_parameters()}
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert branches <= held and not before & held and len(optimizer.param_groups) == 2


def test_a_checkpoint_whose_exits_differ_from_the_schedules_is_refused(thinned_run, tmp_path):
    _, path = thinned_run
    state = read_checkpoint(path)
    state["structure"][0]["config"]["exits"]["exit1"]["loss_weight"] = 0.9
    model = create_model("resnet20_cifar", 10, 3)
    load_schedule(model, torch.optim.SGD(model.parameters(), lr=0.1), str(AGP_THINNING),
                  example_input=torch.zeros(1, 3, 32, 32))
    with pytest.raises(CheckpointError, match="configured differently"):
        load_checkpoint(model, state)


def test_a_format_1_checkpoint_still_loads(tmp_path):
    model, policy_exits = lenet_with_exit()
    policy_exits.set_thresholds([0.7])
    legacy = {"state_dict": {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")},
              "early_exit": {"name": "branchy", "config": policy_exits.config, "num_classes": 10,
                             "input_shape": [1, 28, 28], "exit_names": ["exit1"], "criteria": ["entropy"],
                             "thresholds": [0.7]},
              "thinning_recipes": []}
    fresh = create_model("lenet_mnist", 10, 1)
    load_checkpoint(fresh, legacy)
    assert EarlyExits.of(fresh).thresholds == [0.7]
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def lenet_with_exit():
    torch.manual_seed(0)
    model = create_model("lenet_mnist", 10, 1)
    exits = EarlyExits.from_config({"exits": {"exit1": {"attach": "pool1", "branch": ["flatten", "linear"]}}},
                                   model, num_classes=10, input_shape=(1, 28, 28), name="branchy")
    return model, exits


def test_unknown_step_kinds_and_weights_that_do_not_fit_are_checkpoint_errors(tmp_path):
    model, _ = lenet_with_exit()
    state = checkpoint_state(model)
    with pytest.raises(CheckpointError, match="unknown structure step kind 'quantize'"):
        load_checkpoint(create_model("lenet_mnist", 10, 1), dict(state, structure=[{"kind": "quantize"}]))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(create_model("lenet_mnist", 10, 1), dict(state, structure=[]))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(create_model("resnet20_cifar", 10, 3), state)
