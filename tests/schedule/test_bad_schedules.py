"""Every file in tests/schedule/bad/ is refused before training with the exact message its first line states.

Each message names the file, the line, the YAML path and, where it helps, close names and what is valid.
"""
from pathlib import Path

import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.schedule import load_schedule

BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))


class Net(nn.Module):
    """conv1 -> relu -> conv2 -> flatten -> fc, on 1x8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.conv2(self.relu(self.conv1(x)))))


def expected_message(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")  # some files are not UTF-8 past this line
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first[len("# expect: "):].replace("{file}", str(path))


def test_the_corpus_is_not_empty():
    assert len(BAD) >= 50


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_schedule_gives_its_exact_error(path: Path):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ScheduleError) as info:
        load_schedule(model, optimizer, str(path), example_input=torch.zeros(1, 1, 8, 8))
    assert str(info.value) == expected_message(path)
