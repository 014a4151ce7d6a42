"""APoZ pruners: filters whose ReLU outputs are most often zero in training steps are pruned first."""
import copy

import pytest
import torch
from torch import nn

from distill_ee.errors import ScheduleError
from distill_ee.pruning.activation import ActivationAPoZRankedFilterPruner, ActivationAPoZRankedFilterPruner_AGP
from distill_ee.pruning.agp import agp_target_sparsity
from distill_ee.pruning.masks import ParameterMasker
from distill_ee.schedule import schedule_from_text


class Block(nn.Module):
    """Distiller's naming: conv1's activation is relu1."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 1)
        self.relu1 = nn.ReLU()

    def forward(self, x):
        return self.relu1(self.conv1(x))


def block_with_dead_filter(dead=2):
    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():
        block.conv1.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
        block.conv1.bias.zero_()
        block.conv1.weight[dead] = -1.0  # on positive inputs this filter is always zero after the ReLU
    return block


def distiller_apoz(relu_outputs):
    """Distiller's activation_channels_apoz averaged over batches weighted by numel, written out."""
    total, weight = 0, 0
    for a in relu_outputs:
        nonzero = a.abs().gt(0).sum(dim=(2, 3)).float() / (a.size(2) * a.size(3))
        total = total + (100 - nonzero.mean(dim=0) * 100) * a.numel()
        weight += a.numel()
    return total / weight


def run(model, batches):
    model.train()
    outs = []
    for x in batches:
        outs.append(model(x).detach())
    return outs


def prune(pruner, model, fraction_meta=None):
    masks = {"conv1.weight": ParameterMasker("conv1.weight")}
    pruner.set_param_mask(model.conv1.weight, "conv1.weight", masks, fraction_meta or {"model": model})
    return masks["conv1.weight"].mask


def test_the_always_zero_filter_is_pruned_first():
    model = block_with_dead_filter(dead=2)
    pruner = ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model)
    run(model, [torch.rand(3, 1, 5, 5) + 0.1 for _ in range(2)])
    assert pruner.stats.apoz("conv1.weight")[2] == 100.0
    assert torch.equal(prune(pruner, model)[:, 0, 0, 0], torch.tensor([1.0, 1.0, 0.0, 1.0]))


def test_apoz_equals_distillers_statistic_and_the_highest_apoz_filters_go():
    torch.manual_seed(1)
    model = Block()
    pruner = ActivationAPoZRankedFilterPruner("t", "Filters", 0.5, ["conv1.weight"], model=model)
    outs = run(model, [torch.randn(4, 1, 6, 6), torch.randn(2, 1, 6, 6)])
    apoz = distiller_apoz(outs)
    assert torch.allclose(pruner.stats.apoz("conv1.weight").float(), apoz, atol=1e-4)
    keep = torch.zeros(4)
    keep[torch.argsort(apoz, stable=True)[:2]] = 1  # Distiller: argsort ascending, keep all but the last k
    assert torch.equal(prune(pruner, model)[:, 0, 0, 0], keep)


def test_eval_passes_are_not_collected():
    model = block_with_dead_filter()
    pruner = ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model)
    model.eval()
    model(torch.rand(2, 1, 3, 3))
    assert pruner.stats.apoz("conv1.weight") is None


def test_statistics_restart_after_each_ranking():
    model = block_with_dead_filter(dead=2)
    pruner = ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model)
    run(model, [torch.rand(2, 1, 3, 3) + 0.1])
    prune(pruner, model)
    with torch.no_grad():
        model.conv1.weight[2] = 5.0
        model.conv1.weight[0] = -1.0
    run(model, [torch.rand(2, 1, 3, 3) + 0.1])
    assert torch.equal(prune(pruner, model)[:, 0, 0, 0], torch.tensor([0.0, 1.0, 1.0, 1.0]))


def test_the_relu_is_found_by_tracing_when_it_is_shared_and_its_input_zeros_are_counted():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    torch.manual_seed(0)
    model = Shared()
    pruner = ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model)
    assert pruner.sources["conv1.weight"].module == "bn1" and pruner.sources["conv1.weight"].before_relu
    model.train()
    x = torch.randn(8, 1, 4, 4)
    after_relu = torch.relu(model.bn1(model.conv1(x))).detach()  # the same batch statistics in train mode
    assert torch.allclose(pruner.stats.apoz("conv1.weight").float(), distiller_apoz([after_relu]), atol=1e-4)


def test_agp_prunes_the_agp_target_of_filters():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 20, 1))
    model.add_module("relu1", nn.ReLU())
    agp = ActivationAPoZRankedFilterPruner_AGP("t", 0.1, 0.6, "Filters", ["conv1.weight"], model=model)
    meta = {"starting_epoch": 1, "ending_epoch": 11, "frequency": 1, "model": model}
    for epoch in (1, 6, 10):
        run(model, [torch.randn(4, 1, 3, 3)])
        mask = prune(agp, model, {**meta, "current_epoch": epoch})
        target = agp_target_sparsity(0.1, 0.6, epoch, 1, 11, 1)
        assert int((mask[:, 0, 0, 0] == 0).sum()) == int(target * 20 + 1e-6)


def test_pruning_without_collected_statistics_is_one_schedule_error():
    model = block_with_dead_filter()
    pruner = ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model)
    with pytest.raises(ScheduleError, match="no APoZ statistics of 'conv1.weight'") as err:
        prune(pruner, model)
    assert "\n" not in str(err.value)


def test_a_copy_collects_nothing_and_without_statistics_leaves_masks_alone():
    model = block_with_dead_filter()
    pruner = copy.deepcopy(ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model))
    run(model, [torch.rand(2, 1, 3, 3)])
    assert pruner.stats.apoz("conv1.weight") is None and prune(pruner, model) is None


def test_statistics_survive_a_checkpoint():
    model = block_with_dead_filter()
    pruner = ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model)
    run(model, [torch.rand(2, 1, 3, 3) + 0.1])
    other = ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=block_with_dead_filter())
    other.load_state_dict(pruner.state_dict())
    assert torch.equal(other.stats.apoz("conv1.weight"), pruner.stats.apoz("conv1.weight"))


def test_a_weight_without_a_following_relu_is_refused():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 4, 1))
    with pytest.raises(ScheduleError, match=r"weights\[0\].*no ReLU reads the output of 'conv1'"):
        ActivationAPoZRankedFilterPruner("t", "Filters", 0.25, ["conv1.weight"], model=model)


SCHEDULE = """
pruners:
  trim:
    class: ActivationAPoZRankedFilterPruner_AGP
    initial_sparsity: 0.25
    final_sparsity: 0.5
    group_type: {group_type}
    weights: [conv1.weight]
policies:
  - pruner: {{instance_name: trim}}
    starting_epoch: {start}
    ending_epoch: 10
    frequency: 1
"""


def test_a_schedule_pruning_before_any_training_step_is_one_located_error():
    text = SCHEDULE.format(group_type="Filters", start=0)
    with pytest.raises(ScheduleError, match=r"s\.yaml:10: policies\[0\]: .*none precede its first pruning at "
                                            r"epoch 0 \(initial_sparsity 0\.25\)") as err:
        schedule_from_text(block_with_dead_filter(), None, text, file="s.yaml")
    assert "\n" not in str(err.value)


def test_a_schedule_starting_after_a_training_epoch_prunes_from_the_collected_statistics():
    model = block_with_dead_filter(dead=1)
    sched = schedule_from_text(model, None, SCHEDULE.format(group_type="Filters", start=1), file="s.yaml")
    run(model, [torch.rand(2, 1, 3, 3) + 0.1])
    sched.on_epoch_begin(1)
    assert torch.all(model.conv1.weight[1] == 0) and torch.all(model.conv1.weight[[0, 2, 3]] != 0)


def test_a_schedule_with_another_group_type_is_one_located_error():
    with pytest.raises(ScheduleError, match=r"s\.yaml:7: pruners\.trim\.group_type: .*'Channels' cannot be ranked"):
        schedule_from_text(block_with_dead_filter(), None, SCHEDULE.format(group_type="Channels", start=1),
                           file="s.yaml")
