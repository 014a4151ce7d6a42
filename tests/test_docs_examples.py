"""The code of docs/plugins.md, run literally: the exit criterion and the attachment kind it shows a plugin
writing are registered, named from a schedule, and do what the page says."""
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from distill_ee import EarlyExits, load_schedule, save_checkpoint
from distill_ee.attachment import attachment_of, backbone_parameters, unregister_attachment
from distill_ee.checkpoint import load_checkpoint
from distill_ee.components import load_components
from distill_ee.registry import EXIT_CRITERIA, EXTENSIONS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def blocks(title: str, language: str) -> list:
    return re.findall(rf"```{language}\n(.*?)```", section(title), re.S)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.conv1(x)), 1))


@pytest.fixture
def criterion_block():
    load_components()
    namespace: dict = {}
    exec(blocks("Your own exit criterion", "python")[0], namespace)
    try:
        yield namespace
    finally:
        EXIT_CRITERIA.remove("logit_gap")


@pytest.fixture
def attachment_block():
    load_components()
    namespace: dict = {}
    exec(blocks("Your own attachment", "python")[0], namespace)
    try:
        yield namespace
    finally:
        EXTENSIONS.remove("AddConstant")
        unregister_attachment("add_constant")


def test_the_pages_criterion_is_named_by_a_schedule_and_exports(criterion_block):
    model = Net()
    exits = EarlyExits.from_config({"criterion": "logit_gap", "exits": {
        "e1": {"attach": "relu", "branch": ["adaptive_avgpool", "flatten", "linear"], "threshold": 1.0}}},
        model, num_classes=10, input_shape=(1, 8, 8))
    criterion = exits.multi_exit_model().criteria[0]
    assert type(criterion) is criterion_block["LogitGap"] and criterion.export_problem() is None
    logits = torch.tensor([[3.0, 1.0, 0.0], [1.0, 0.9, 0.0]])
    assert criterion.exit_mask(logits, 1.0).tolist() == [True, False]


def test_the_pages_attachment_is_attached_by_its_yaml_and_restored(attachment_block, tmp_path):
    (text,) = blocks("Your own attachment", "yaml")
    schedule = tmp_path / "s.yaml"
    schedule.write_text("version: 1\n" + text)
    assert yaml.safe_load(text)["extensions"]["plus"]["class"] == "AddConstant"
    model = Net()
    scheduler = load_schedule(model, torch.optim.SGD(model.parameters(), lr=0.1), str(schedule),
                              example_input=torch.zeros(1, 1, 8, 8))
    plus = attachment_of(model, "add_constant")
    assert float(plus.offset.detach()) == 0.5
    assert "add_constant.offset" not in dict(backbone_parameters(model))
    save_checkpoint(tmp_path / "c.pth.tar", model, scheduler=scheduler)
    fresh = Net()
    load_checkpoint(fresh, tmp_path / "c.pth.tar")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
