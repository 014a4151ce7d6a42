"""The README's ten-line integration into a plain PyTorch loop, and exact resume from a checkpoint."""
from pathlib import Path

import torch
from torch import nn

import distill_ee
from distill_ee.checkpoint import read_checkpoint, write_checkpoint

SCHEDULE = """
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.10
    final_sparsity: 0.70
    weights: [module.conv1.weight, module.fc.weight]
lr_schedulers:
  step:
    class: StepLR
    step_size: 2
    gamma: 0.5
policies:
  - pruner:
      instance_name: agp
    starting_epoch: 0
    ending_epoch: 4
    frequency: 1
  - lr_scheduler:
      instance_name: step
    starting_epoch: 0
    ending_epoch: 6
    frequency: 1
"""


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.conv1(x)))))


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]


def setup(tmp_path: Path):
    torch.manual_seed(1)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    path = tmp_path / "schedule.yaml"
    path.write_text(SCHEDULE)
    scheduler = distill_ee.load_schedule(model, optimizer, str(path))
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, epochs, start=0):
    """The README's loop: a standard one with the scheduler's six calls."""
    criterion = nn.CrossEntropyLoss()
    batches = data()
    for epoch in range(start, epochs):
        scheduler.on_epoch_begin(epoch)
        for i, (x, y) in enumerate(batches):
            scheduler.on_minibatch_begin(epoch, i, len(batches))
            loss = criterion(model(x), y)
            loss = scheduler.before_backward_pass(epoch, i, len(batches), loss, target=y)
            optimizer.zero_grad()
            loss.backward()
            scheduler.before_parameter_optimization(epoch, i, len(batches))
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, len(batches))
        scheduler.on_epoch_end(epoch, metrics={"min": float(loss.detach()), "max": 0.0})


def test_the_schedule_prunes_and_decays_the_lr_inside_a_plain_loop(tmp_path):
    model, optimizer, scheduler = setup(tmp_path)
    train(model, optimizer, scheduler, 6)
    conv_sparsity = float((model.conv1.weight == 0).float().mean())
    assert abs(conv_sparsity - 0.70) < 0.03
    assert float((model.fc.weight == 0).float().mean()) > 0.65
    assert optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 3


def test_a_resumed_run_ends_with_exactly_the_weights_and_masks_of_an_uninterrupted_one(tmp_path):
    model_a, opt_a, sched_a = setup(tmp_path)
    train(model_a, opt_a, sched_a, 6)

    model_b, opt_b, sched_b = setup(tmp_path)
    train(model_b, opt_b, sched_b, 3)
    ckpt = tmp_path / "checkpoint.pth.tar"
    write_checkpoint(ckpt, {"epoch": 2, "state_dict": model_b.state_dict(), "optimizer": opt_b.state_dict(),
                           "compression_sched": sched_b.state_dict()})
    del model_b, opt_b, sched_b

    model_c, opt_c, sched_c = setup(tmp_path)
    state = read_checkpoint(ckpt)
    model_c.load_state_dict(state["state_dict"])
    opt_c.load_state_dict(state["optimizer"])
    sched_c.load_state_dict(state["compression_sched"])
    train(model_c, opt_c, sched_c, 6, start=state["epoch"] + 1)

    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), name
    for name, masker in sched_a.masks.items():
        other = sched_c.masks[name].mask
        assert (masker.mask is None) == (other is None), name
        if masker.mask is not None:
            assert torch.equal(masker.mask, other), name
    assert opt_a.param_groups[0]["lr"] == opt_c.param_groups[0]["lr"]
