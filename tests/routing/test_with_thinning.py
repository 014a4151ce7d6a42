"""Routing on a thinned network: filters removed inside routed blocks, costs measured again, checkpoints replay."""
import torch

from distill_ee.checkpoint import load_checkpoint, save_checkpoint
from distill_ee.routing import Routing
from distill_ee.routing.stats import routing_statistics
from routing_support import TinyRes, build, routing_schedule
from support import one_epoch_of_one_step

THINNING = """
pruners:
  filters:
    class: L1RankedStructureParameterPruner
    group_type: Filters
    desired_sparsity: 0.5
    weights: [layer1.0.conv1.weight, layer1.1.conv1.weight, layer2.1.conv1.weight]
extensions:
  thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
    arch: tiny
    dataset: tiny
"""
POLICIES = """
  - routing: {instance_name: r}
    starting_epoch: 0
    ending_epoch: 3
  - pruner: {instance_name: filters}
    epochs: [1]
  - extension: {instance_name: thinner}
    epochs: [1]"""


def test_thinning_inside_routed_blocks_keeps_the_routing_and_lowers_their_costs(data, tmp_path):
    x, y = data
    model, optimizer, scheduler = build(routing_schedule(extra="    gate: rnn\n" + THINNING, policies=POLICIES))
    routing = Routing.of(model).set
    before = list(routing.block_macs)
    for epoch in range(3):
        model.train()
        one_epoch_of_one_step(model, optimizer, scheduler, epoch, x, y)
    assert model.layer1[0].conv1.out_channels == 4
    stats = routing_statistics(model, [(x, y)])
    assert [b["macs"] for b in stats["blocks"]] == routing.block_macs
    assert [2 * after for after in routing.block_macs] == before  # half of each block's MACs
    save_checkpoint(tmp_path / "thin.pth", model)
    fresh = TinyRes()
    load_checkpoint(fresh, tmp_path / "thin.pth")
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
