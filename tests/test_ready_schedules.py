"""Every schedule in schedules/ states its command line and loads on the model that command names."""
import re
from pathlib import Path

import pytest
import torch

from distill_ee.apputils.models import create_model
from distill_ee.schedule import load_schedule

SCHEDULES = sorted((Path(__file__).resolve().parents[1] / "schedules").glob("*.yaml"))
INPUT_SHAPES = {"mnist5k": (1, 28, 28), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "imagenet": (3, 64, 64)}


def header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_there_are_ready_schedules_for_each_combination():
    names = {p.name for p in SCHEDULES}
    assert {"lenet_mnist.earlyexit_agp.yaml", "lenet_mnist.earlyexit.yaml", "resnet20_cifar.earlyexit.yaml",
            "resnet18.earlyexit.yaml"} <= names


@pytest.mark.parametrize("path", SCHEDULES, ids=[p.stem for p in SCHEDULES])
def test_schedule_header_has_the_command_and_the_schedule_loads(path: Path):
    text = header(path)
    assert "compress_classifier.py" in text and f"schedules/{path.name}" in text
    arch = re.search(r"--arch (\S+)", text).group(1)
    dataset_match = re.search(r"--dataset (\S+)", text)
    dataset = dataset_match.group(1) if dataset_match else "mnist5k"
    shape = INPUT_SHAPES[dataset]
    num_classes = 1000 if dataset == "imagenet" else 10
    model = create_model(arch, num_classes=num_classes, in_channels=shape[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = load_schedule(model, optimizer, str(path), example_input=torch.zeros(1, *shape))
    assert scheduler.policies
