"""EarlyExits built from a schedule: the model must be cut into stages at load time, so a model that cannot be
cut is a located schedule error before any training, with what is wrong."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit.exits import EarlyExits
from distill_ee.errors import DistillEEError, ScheduleError
from distill_ee.schedule import schedule_from_text


class Untraceable(nn.Module):
    """A forward pass with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.shape[0] > 0:  # always true, but a traced shape cannot steer control flow
            x = self.relu(x)
        return self.fc(self.flatten(x))


def schedule(stages=""):
    return f"""version: 1
early_exits:
  branchy:
    class: EarlyExit
{stages}    exits:
      exit1: {{attach: conv, branch: [flatten, linear], threshold: 0.5}}
"""


def build(model, text):
    return schedule_from_text(model, torch.optim.SGD(model.parameters(), lr=0.1), text, file="s.yaml",
                              example_input=torch.zeros(1, 1, 8, 8))


def test_a_model_torch_fx_cannot_trace_is_refused_when_the_schedule_loads():
    with pytest.raises(ScheduleError) as info:
        build(Untraceable(), schedule())
    message = str(info.value)
    assert message.startswith("s.yaml:3: early_exits.branchy: cannot trace Untraceable with torch.fx")
    assert "give `stages:`" in message


def test_the_same_model_with_its_stages_listed_loads_and_exits_for_real():
    model = Untraceable()
    build(model, schedule("    stages: [conv, relu, flatten, fc]\n"))
    multi = EarlyExits.of(model).multi_exit_model().eval()
    logits, index = multi(torch.randn(4, 1, 8, 8))
    assert logits.shape == (4, 10) and index.shape == (4,)


def test_a_model_whose_output_is_not_finite_says_so():
    model = Untraceable()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    with pytest.raises(ScheduleError, match="own output on a dummy batch is not finite"):
        build(model, schedule("    stages: [conv, relu, flatten, fc]\n"))


def test_a_model_takes_one_early_exits_instance():
    model = Untraceable()
    text = schedule("    stages: [conv, relu, flatten, fc]\n")
    second = text.split("early_exits:\n")[1].replace("branchy", "more").replace("exit1", "exit9")
    with pytest.raises(ScheduleError, match=r"s.yaml:\d+: early_exits.more: the model already has early exits"):
        build(model, text + second)


def test_exits_of_a_model_without_them_is_none_and_the_view_refuses():
    assert EarlyExits.of(Untraceable()) is None
    with pytest.raises(DistillEEError, match="has no early exits attached"):
        EarlyExits(Untraceable())
