"""The user-facing errors: every one is a single line, whatever value its message shows."""
import torch

from distill_ee.errors import CheckpointError, ScheduleError


def test_a_message_showing_a_multi_line_value_is_still_one_line():
    value = torch.zeros(3, 3)
    err = CheckpointError(f"criteria must be a list of names, got {value!r}")
    assert "\n" not in str(err)
    assert str(err) == "criteria must be a list of names, got tensor([[0., 0., 0.], [0., 0., 0.], [0., 0., 0.]])"


def test_a_located_message_keeps_its_location_on_the_one_line():
    err = ScheduleError("must be a number, got 'a\nb'", file="s.yaml", line=3, path="pruners.p.x")
    assert str(err) == "s.yaml:3: pruners.p.x: must be a number, got 'a b'"
