"""Simulated decisions: the first exit whose criterion fires, else the final classifier."""
import pytest
import torch

from distill_ee.early_exit.criteria import criteria_list
from distill_ee.early_exit.decisions import decide_exits, exit_counts

SURE = [8.0, 0.0, 0.0]
UNSURE = [0.0, 0.0, 0.0]


def test_each_sample_takes_its_first_confident_exit():
    exit1 = torch.tensor([SURE, UNSURE, UNSURE])
    exit2 = torch.tensor([UNSURE, SURE, UNSURE])
    final = torch.tensor([[0.0, 1.0, 0.0]] * 3)
    logits, index = decide_exits([exit1, exit2, final], criteria_list("entropy", 2), [0.5, 0.5])
    assert index.tolist() == [0, 1, 2]
    assert torch.equal(logits, torch.stack([exit1[0], exit2[1], final[2]]))
    assert exit_counts(index, 3) == [1, 1, 1]


def test_a_none_threshold_never_exits():
    sure = torch.tensor([SURE, SURE])
    _, index = decide_exits([sure, sure, sure], criteria_list("entropy", 2), [None, 0.5])
    assert index.tolist() == [1, 1]


def test_one_criterion_and_threshold_per_exit_are_required():
    sure = torch.tensor([SURE])
    with pytest.raises(ValueError):
        decide_exits([sure, sure], criteria_list("entropy", 2), [0.5, 0.5])
