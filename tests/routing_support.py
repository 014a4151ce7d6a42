"""A small residual network (three identity blocks, one downsampling block) and schedules routing it."""
import torch
from torch import nn

from distill_ee.apputils.models.resnet_cifar import BasicBlock
from distill_ee.schedule import schedule_from_text

INPUT = (1, 12, 12)


class TinyRes(nn.Module):
    """stem -> layer1 (two 8-channel blocks) -> layer2 (a downsampling block, an identity block) -> fc."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2, down), BasicBlock(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def routing_schedule(cls: str = "SkipGates", blocks: str = "['layer*.*']", extra: str = "", policies: str = "") -> str:
    """A schedule with one routing instance ``r`` (and the given policies)."""
    return f"""
version: 1
routing:
  r:
    class: {cls}
    blocks: {blocks}
{extra}
policies:
{policies or '  - routing: {instance_name: r}' + chr(10) + '    starting_epoch: 0' + chr(10) + '    ending_epoch: 1'}
"""


def build(text: str, seed: int = 0, lr: float = 0.05):
    """(model, optimizer, scheduler) for a schedule on a fresh TinyRes."""
    torch.manual_seed(seed)
    model = TinyRes()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = schedule_from_text(model, optimizer, text, file="routing.yaml", example_input=torch.zeros(1, *INPUT))
    return model, optimizer, scheduler
