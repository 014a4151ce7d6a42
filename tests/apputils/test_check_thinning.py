"""``distill-ee check`` on a schedule that thins: each pruned layer is said removable, or kept and why."""
import pytest

from distill_ee.apputils.check import check

pytest.importorskip("torchvision")

SCHEDULE = """version: 1
pruners:
  filter_pruner:
    class: L1RankedStructureParameterPruner
    group_type: Filters
    desired_sparsity: 0.25
    weights: [features.2.0.block.0.0.weight, features.3.1.block.3.0.weight, features.2.0.block.3.0.weight]
extensions:
  net_thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
policies:
  - pruner: {instance_name: filter_pruner}
    epochs: [0]
  - extension: {instance_name: net_thinner}
    epochs: [0]
"""


def rows(text: str) -> dict:
    """The thinning table's rows: target -> what happens."""
    table = text.split("Thinning of the pruned layers\n")[1].split("\n\n")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    return {target: note for _, target, note in cells[1:]}


def test_each_pruned_layer_says_whether_thinning_can_remove_its_filters(tmp_path):
    path = tmp_path / "thin.yaml"
    path.write_text(SCHEDULE)
    found = rows(check(str(path), "efficientnet_b0", "cifar10"))
    assert found["features.2.0.block.0.0.weight"] == "removable"  # through a depthwise conv and an SE block
    assert found["features.3.1.block.3.0.weight"].startswith("kept: ")
    assert "stochastic_depth is not known to thinning" in found["features.3.1.block.3.0.weight"]
    assert found["features.2.0.block.3.0.weight"] == "kept: add combines tensors of different layouts"


def test_a_schedule_without_thinning_has_no_thinning_table(tmp_path):
    path = tmp_path / "prune.yaml"
    path.write_text(SCHEDULE.split("extensions:")[0] + "policies:\n  - pruner: {instance_name: filter_pruner}\n"
                    "    epochs: [0]\n")
    assert "Thinning of the pruned layers" not in check(str(path), "efficientnet_b0", "cifar10")
