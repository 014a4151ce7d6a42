"""The README's own loop, run literally: exits, AGP filter pruning and thinning in a plain PyTorch loop; the
checkpoint restored into a fresh model with one call; a resumed run identical to an uninterrupted one."""
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import distill_ee
from distill_ee.apputils.models import create_model

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your training loop, with a schedule"

SCHEDULE = """
version: 1
early_exits:
  branchy:
    class: EarlyExit
    final_loss_weight: auto
    exits:
      exit1:
        attach: pool1
        branch: [{type: conv, out_channels: 8, kernel_size: 3, padding: 1}, relu, adaptive_avgpool, flatten, linear]
        loss_weight: 0.3
        threshold: 0.5
      exit2:
        attach: relu2               # reads conv2's filters: thinning must shrink this branch too
        branch: [{type: conv, out_channels: 8, kernel_size: 3}, relu, adaptive_avgpool, flatten, linear]
        loss_weight: 0.2
        threshold: 0.5
pruners:
  filters:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.2
    final_sparsity: 0.5
    group_type: Filters
    weights: [conv2.weight]
extensions:
  thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
lr_schedulers:
  step: {class: StepLR, step_size: 2, gamma: 0.5}
policies:
  - early_exit: {instance_name: branchy}
    starting_epoch: 0
    ending_epoch: 4
  - pruner: {instance_name: filters}
    starting_epoch: 0
    ending_epoch: 3
  - extension: {instance_name: thinner}
    epochs: [2]
  - lr_scheduler: {instance_name: step}
    starting_epoch: 0
    ending_epoch: 4
"""


def readme_blocks():
    """The python blocks of the README's section on a user's own loop, in order."""
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


SETUP, LOOP, RESTORE, RESUME = readme_blocks()


def Net():
    """The model "your code builds": the zoo's B-LeNet."""
    return create_model("lenet_mnist", 10, 1)


def data(seed, n=96):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def validate(model, loader):
    """The user's own evaluation: (loss, top-1)."""
    model.eval()
    with torch.no_grad():
        x, y = loader[0]
        out = model(x)
    return float(nn.functional.cross_entropy(out, y)), 100.0 * float((out.argmax(1) == y).float().mean())


def user_namespace(epochs):
    """What the README's blocks expect the user to have: imports, model, optimizer, data, criterion, validate."""
    torch.manual_seed(1)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return {"torch": torch, "distill_ee": distill_ee, "Net": Net, "model": model, "optimizer": optimizer,
            "train_loader": data(0), "val_loader": data(1, 16), "criterion": nn.CrossEntropyLoss(),
            "validate": validate, "epochs": epochs, "x": data(2, 32)[0][0]}


@pytest.fixture
def in_tmp(tmp_path):
    """Run in a folder holding schedule.yaml, as the README's relative paths assume."""
    (tmp_path / "schedule.yaml").write_text(SCHEDULE)
    before = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(before)


def test_the_readme_has_its_four_blocks():
    assert "load_schedule" in SETUP and "on_minibatch_begin" in LOOP
    assert "load_checkpoint" in RESTORE and "load_checkpoint" in RESUME and "load_schedule" in RESUME


def test_the_readme_loop_trains_exits_prunes_and_thins(in_tmp):
    ns = user_namespace(epochs=4)
    exec(SETUP + LOOP, ns)
    model, scheduler = ns["model"], ns["scheduler"]
    assert model.conv2.out_channels == 25  # half of conv2's 50 filters pruned and removed in epoch 2
    assert model.early_exits.exit2[0].in_channels == 25 and model.fc1.in_features == 25 * 4 * 4
    assert [s["kind"] for s in distill_ee.structure_steps(model)] == ["early_exits", "thinning"]
    assert ns["optimizer"].param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 2)
    assert scheduler.find("early_exit")[0].exits.exit_names == ["exit1", "exit2"]


def test_a_fresh_model_restored_by_one_call_evaluates_identically(in_tmp):
    ns = user_namespace(epochs=4)
    exec(SETUP + LOOP, ns)
    trained, x = ns["model"].eval(), ns["x"]
    expected = distill_ee.EarlyExits.of(trained).multi_exit_model().eval()
    exec(RESTORE, ns)  # rebinds model to a fresh Net() and restores it
    restored = ns["model"]
    assert restored is not trained and restored.conv2.out_channels == 25
    assert torch.equal(restored.eval()(x), trained(x))
    logits, index = ns["logits"], ns["exit_index"]
    want_logits, want_index = expected(x)
    assert torch.equal(index, want_index) and torch.equal(logits, want_logits)
    for a, b in zip(ns["multi"].simulate(x), expected.simulate(x)):
        assert torch.equal(a, b)


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(in_tmp):
    whole = user_namespace(epochs=4)
    exec(SETUP + LOOP, whole)
    first = user_namespace(epochs=2)
    exec(SETUP + LOOP, first)  # stops after epoch 1, before the thinning epoch
    resumed = user_namespace(epochs=4)
    exec(RESUME + LOOP, resumed)
    assert resumed["start_epoch"] == 2
    a, b = whole["model"].state_dict(), resumed["model"].state_dict()
    assert list(a) == list(b)
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name
    for name, masker in whole["scheduler"].masks.items():
        other = resumed["scheduler"].masks[name].mask
        assert (masker.mask is None) == (other is None), name
        if masker.mask is not None:
            assert torch.equal(masker.mask, other), name
    assert whole["optimizer"].param_groups[0]["lr"] == resumed["optimizer"].param_groups[0]["lr"]
