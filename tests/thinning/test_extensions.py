"""FilterRemover / ChannelRemover: thinning scheduled from a YAML schedule, inside the user's training loop."""
import pytest
import torch
from torch import nn

from distill_ee.checkpoint import read_checkpoint, write_checkpoint
from distill_ee.apputils.models import create_model
from distill_ee.apputils.report import thinning_summary
from distill_ee.errors import ScheduleError
from distill_ee.registry import EXTENSIONS
from distill_ee.schedule import schedule_from_text
from distill_ee.thinning import ChannelRemover, FilterRemover, apply_thinning_recipes, thinning_recipes

BLOCKS = ", ".join(f"module.layer{s}.{b}.conv1.weight" for s in (1, 2, 3) for b in range(3))
SCHEDULE = f"""
version: 1
pruners:
  filter_pruner:
    class: L1RankedStructureParameterPruner
    group_type: Filters
    desired_sparsity: 0.5
    weights: [{BLOCKS}]
extensions:
  net_thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
    arch: resnet20_cifar
    dataset: cifar10
policies:
  - pruner:
      instance_name: filter_pruner
    epochs: [0]
  - extension:
      instance_name: net_thinner
    epochs: [1]
"""


def batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]


def setup():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = schedule_from_text(model, optimizer, SCHEDULE, example_input=torch.zeros(1, 3, 32, 32))
    return model, optimizer, scheduler


def run_epoch(model, optimizer, scheduler, epoch, data):
    """The user's loop with the scheduler's calls; returns conv1 widths seen at each minibatch."""
    widths = []
    model.train()
    scheduler.on_epoch_begin(epoch)
    for i, (x, y) in enumerate(data):
        scheduler.on_minibatch_begin(epoch, i, len(data))
        widths.append(model.layer2[0].conv1.out_channels)
        loss = nn.functional.cross_entropy(model(x), y)
        loss = scheduler.before_backward_pass(epoch, i, len(data), loss, target=y)
        optimizer.zero_grad()
        loss.backward()
        scheduler.before_parameter_optimization(epoch, i, len(data))
        optimizer.step()
        scheduler.on_minibatch_end(epoch, i, len(data))
    scheduler.on_epoch_end(epoch, metrics={"min": loss.item(), "max": 0.0})
    return widths


def test_the_schedule_thins_at_the_first_minibatch_of_its_epoch():
    model, optimizer, scheduler = setup()
    data = batches()
    assert run_epoch(model, optimizer, scheduler, 0, data) == [32, 32]
    assert run_epoch(model, optimizer, scheduler, 1, data) == [16, 16]
    assert run_epoch(model, optimizer, scheduler, 2, data) == [16, 16]
    thinner = scheduler.find("extension")[0]
    assert isinstance(thinner, FilterRemover) and len(thinner.state_dict()["recipes"]) == 1
    for name, param in model.named_parameters():
        assert optimizer.state[param]["momentum_buffer"].shape == param.shape, name
    assert scheduler.masks["layer2.0.conv1.weight"].mask.shape == (16, 16, 3, 3)


def test_without_minibatch_hooks_the_thinning_happens_at_epoch_end():
    model, optimizer, scheduler = setup()
    run_epoch(model, optimizer, scheduler, 0, batches())
    scheduler.on_epoch_begin(1)
    scheduler.on_epoch_end(1)
    assert model.layer3[1].conv1.out_channels == 32


def test_a_thinned_run_resumes_from_its_checkpoint(tmp_path):
    model, optimizer, scheduler = setup()
    data = batches()
    for epoch in range(2):
        run_epoch(model, optimizer, scheduler, epoch, data)
    write_checkpoint(tmp_path / "ckpt", {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "compression_sched": scheduler.state_dict(),
                                        "thinning_recipes": thinning_recipes(model)})
    saved = read_checkpoint(tmp_path / "ckpt")

    fresh, fresh_optimizer, fresh_scheduler = setup()
    apply_thinning_recipes(fresh, saved["thinning_recipes"], fresh_optimizer, fresh_scheduler.masks)
    fresh.load_state_dict(saved["state_dict"])
    fresh_scheduler.load_state_dict(saved["compression_sched"])
    fresh_optimizer.load_state_dict(saved["optimizer"])
    run_epoch(model, optimizer, scheduler, 2, data)
    run_epoch(fresh, fresh_optimizer, fresh_scheduler, 2, data)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_channel_removal_is_scheduled_the_same_way():
    text = SCHEDULE.replace("FilterRemover", "ChannelRemover").replace("remove_filters", "remove_channels") \
        .replace("Filters", "Channels").replace("conv1.weight", "conv2.weight")
    model = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = schedule_from_text(model, optimizer, text)
    assert isinstance(scheduler.find("extension")[0], ChannelRemover)
    for epoch in range(2):
        run_epoch(model, optimizer, scheduler, epoch, batches())
    assert model.layer1[1].conv2.in_channels == 8 and model.layer1[1].conv1.out_channels == 8


def test_distiller_names_are_registered_and_arch_dataset_are_optional():
    assert {"StructureRemover", "FilterRemover", "ChannelRemover"} <= set(EXTENSIONS.names())
    assert FilterRemover("t").thinning_func_str == "remove_filters"
    assert ChannelRemover("t").thinning_func_str == "remove_channels"


def test_an_unknown_thinning_function_is_a_located_schedule_error():
    text = SCHEDULE.replace("thinning_func_str: remove_filters", "thinning_func_str: remove_filter")
    model = create_model("resnet20_cifar", 10, 3)
    with pytest.raises(ScheduleError) as err:
        schedule_from_text(model, None, text, file="s.yaml")
    message = str(err.value)
    assert "s.yaml:" in message and "thinning_func_str" in message and "did you mean 'remove_filters'" in message


def test_what_the_thinning_kept_is_listed_with_its_reason_for_the_runs_summary():
    text = SCHEDULE.replace(BLOCKS, "module.layer1.0.conv2.weight")  # its channels are added to the stem's conv1's
    model = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = schedule_from_text(model, optimizer, text)
    for epoch in range(2):
        run_epoch(model, optimizer, scheduler, epoch, batches())
    assert model.layer1[0].conv2.out_channels == 16
    [kept] = thinning_summary(scheduler)["thinning"]["kept"]
    assert (kept["thinning"], kept["module"], kept["count"], kept["kind"]) == ("net_thinner", "layer1.0.conv2", 8,
                                                                              "filters")
    assert kept["reason"].startswith("its channels are combined with those of conv1") and \
        "not all zero there" in kept["reason"]


def test_a_run_whose_thinning_kept_nothing_has_no_thinning_entry():
    model, optimizer, scheduler = setup()
    for epoch in range(2):
        run_epoch(model, optimizer, scheduler, epoch, batches())
    assert thinning_summary(scheduler) == {}
