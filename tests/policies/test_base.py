"""The policy base owns the window every policy runs in: due epochs, progress through them, the last one."""
import pytest
from torch import nn

from distill_ee.policies.base import Policy, last_due_epoch
from distill_ee.scheduler import CompressionScheduler


def windowed(start, end, frequency):
    policy = Policy("p")
    policy.set_window(start, end, frequency)
    return policy


def test_last_due_epoch_respects_the_frequency_and_the_exclusive_end():
    assert last_due_epoch(0, 5, 2) == 4 and last_due_epoch(0, 6, 2) == 4 and last_due_epoch(3, 8, None) == 7
    assert windowed(0, 10, 3).last_due_epoch == 9
    assert windowed(0, 10, 3).is_last(9) and not windowed(0, 10, 3).is_last(6)


def test_progress_runs_from_0_at_the_first_due_epoch_to_1_at_the_last():
    policy = windowed(0, 10, 1)
    assert policy.progress(0) == 0.0 and policy.progress(9) == 1.0
    assert policy.progress(3) == pytest.approx(1 / 3) and policy.progress(20) == 1.0
    assert windowed(0, 10, 2).progress(8) == 1.0  # due epochs 0, 2, 4, 6, 8
    assert windowed(4, 5, 1).progress(4) == 1.0  # a one-epoch window is at its end at once
    assert Policy("unscheduled").progress(3) == 0.0


def test_the_scheduler_gives_each_policy_its_window_and_due_epochs():
    scheduler = CompressionScheduler(nn.Linear(2, 2))
    ranged, listed = Policy("ranged"), Policy("listed")
    scheduler.add_policy(ranged, starting_epoch=2, ending_epoch=9, frequency=3)
    scheduler.add_policy(listed, epochs=[7, 1, 4])
    assert (ranged.starting_epoch, ranged.ending_epoch, ranged.frequency) == (2, 9, 3)
    assert ranged.due_epochs == [2, 5, 8] and ranged.last_due_epoch == 8
    assert (listed.starting_epoch, listed.ending_epoch, listed.frequency) == (1, 8, None)
    assert listed.due_epochs == [1, 4, 7] and listed.last_due_epoch == 7
    assert scheduler.policies_for(4) == [listed]
