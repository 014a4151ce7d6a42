"""Checkpoints are written atomically and read back with weights_only=True."""
import os
import pickle

import pytest
import torch

from distill_ee.checkpoint import read_checkpoint, write_checkpoint
from distill_ee.errors import CheckpointError


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
