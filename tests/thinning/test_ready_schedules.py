"""The ready schedules in schedules/ load on their model, and the thinning ones thin where they say."""
from pathlib import Path

import pytest
import torch
from torch import nn

from distill_ee.apputils.models import create_model
from distill_ee.schedule import schedule_from_text

SCHEDULES = Path(__file__).resolve().parents[2] / "schedules"


def load(name, arch, in_channels, size):
    torch.manual_seed(0)
    model = create_model(arch, 10, in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    path = SCHEDULES / name
    scheduler = schedule_from_text(model, optimizer, path.read_text(), file=str(path),
                                   example_input=torch.zeros(1, in_channels, size, size))
    return model, optimizer, scheduler


def one_minibatch(model, optimizer, scheduler, epoch):
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    scheduler.on_minibatch_begin(epoch, 0, 1)
    loss = scheduler.before_backward_pass(epoch, 0, 1, nn.functional.cross_entropy(model(x), y), target=y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.on_minibatch_end(epoch, 0, 1)


def block_widths(model):
    return [model.get_submodule(f"layer{s}.{b}.conv1").out_channels for s in (1, 2, 3) for b in range(3)]


def test_every_ready_schedule_has_a_command_line_in_its_header():
    for name in ("resnet20_cifar.filters_thinning.yaml", "resnet20_cifar.agp_filters_thinning.yaml",
                 "lenet_mnist.agp.yaml"):
        header = (SCHEDULES / name).read_text().split("version:")[0]
        assert "python compress_classifier.py" in header and "--compress schedules/" + name in header


def test_one_shot_filter_thinning_halves_the_block_convs_in_epoch_0():
    model, optimizer, scheduler = load("resnet20_cifar.filters_thinning.yaml", "resnet20_cifar", 3, 32)
    scheduler.on_epoch_begin(0)
    one_minibatch(model, optimizer, scheduler, 0)
    scheduler.on_epoch_end(0, metrics={"min": 1.0, "max": 10.0})
    assert block_widths(model) == [8, 8, 8, 16, 16, 16, 32, 32, 32]


@pytest.mark.filterwarnings("ignore:Detected call of")  # epochs without optimizer steps
def test_agp_filter_thinning_thins_once_after_the_pruning_ends():
    model, optimizer, scheduler = load("resnet20_cifar.agp_filters_thinning.yaml", "resnet20_cifar", 3, 32)
    for epoch in range(31):  # epoch hooks only (the masks are set there), a minibatch in the thinning epoch
        scheduler.on_epoch_begin(epoch)
        if epoch == 30:
            one_minibatch(model, optimizer, scheduler, epoch)
        if epoch in (0, 29):
            assert block_widths(model) == [16, 16, 16, 32, 32, 32, 64, 64, 64]
        scheduler.on_epoch_end(epoch, metrics={"min": 1.0, "max": 10.0})
    assert block_widths(model) == [8, 8, 8, 16, 16, 16, 32, 32, 32]
    multi = scheduler.find("early_exit")[0].exits.multi_exit_model().eval()
    x = torch.randn(4, 3, 32, 32)
    logits, _ = multi(x)
    assert logits.shape == (4, 10)
    assert torch.equal(multi.decide(multi.simulate(x))[1], multi(x)[1])


def test_the_lenet_pruning_schedule_loads():
    _, _, scheduler = load("lenet_mnist.agp.yaml", "lenet_mnist", 1, 28)
    assert [p.kind for p in scheduler.policies] == ["pruner", "pruner", "pruner", "lr_scheduler"]
