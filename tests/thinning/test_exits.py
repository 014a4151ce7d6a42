"""Early-exit branches read a thinned layer's output: their first layers lose the same channels."""
import copy
import gc

import torch

from distill_ee.apputils.models import create_model
from distill_ee.early_exit.exits import EarlyExits
from distill_ee.thinning import apply_thinning_recipes, build_dependency_graph, remove_filters, thinning_recipes
from support import exit_logits

CONV_BRANCH = {"attach": "layer1.0.relu1",
               "branch": [{"type": "conv", "out_channels": 8, "kernel_size": 3}, "relu", "adaptive_avgpool",
                          "flatten", "linear"]}
POOL_BRANCH = {"attach": "layer3.0.relu1",
               "branch": [{"type": "bn"}, {"type": "adaptive_avgpool", "output_size": 2}, "flatten", "linear"]}


def with_exits(model, **exits):
    return EarlyExits.from_config({"exits": exits}, model, num_classes=10, input_shape=(3, 32, 32))


def test_a_branch_joins_the_channel_group_of_the_module_it_reads():
    model = create_model("resnet20_cifar", 10, 3)
    policy = with_exits(model, exit1=CONV_BRANCH, exit2=POOL_BRANCH)
    graph = build_dependency_graph(model)
    assert {c.module: c.factor for c in graph.producer_group("layer1.0.conv1").consumers} == \
        {"layer1.0.conv2": 1, "early_exits.exit1.0": 1}
    group = graph.producer_group("layer3.0.conv1")
    assert "early_exits.exit2.0" in group.per_channel
    assert {c.module: c.factor for c in group.consumers}["early_exits.exit2.3"] == 4
    assert policy.exit_names == ["exit1", "exit2"]


def test_exits_after_thinned_layers_still_compute_the_same_logits(pruned_resnet, images):
    run = pruned_resnet()
    model = run["model"]
    with_exits(model, exit1=CONV_BRANCH, exit2=POOL_BRANCH)
    with torch.no_grad():
        model.early_exits.exit2[0].running_var.uniform_(0.5, 1.5)  # scales; a zero channel stays zero
    dense = exit_logits(model, images)
    remove_filters(model, run["scheduler"].masks, run["optimizer"])
    assert model.early_exits.exit1[0].in_channels == 8
    assert model.early_exits.exit2[0].num_features == 32
    assert model.early_exits.exit2[3].in_features == 32 * 4
    for before, after in zip(dense, exit_logits(model, images)):
        assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)


def test_a_thinned_model_with_exits_reloads_from_its_recipes(pruned_resnet, images):
    run = pruned_resnet()
    model = run["model"]
    with_exits(model, exit1=CONV_BRANCH)
    remove_filters(model, run["scheduler"].masks)
    saved = {"state_dict": copy.deepcopy(model.state_dict()), "thinning_recipes": thinning_recipes(model)}
    assert len(thinning_recipes(model)) == 1

    fresh = create_model("resnet20_cifar", 10, 3)
    with_exits(fresh, exit1=CONV_BRANCH)
    apply_thinning_recipes(fresh, saved["thinning_recipes"])
    fresh.load_state_dict(saved["state_dict"])
    for a, b in zip(exit_logits(model, images), exit_logits(fresh, images)):
        assert torch.equal(a, b)


def test_the_model_alone_tells_where_its_exits_read(pruned_resnet):
    model = pruned_resnet()["model"]
    with_exits(model, exit1=CONV_BRANCH)  # the EarlyExits object is dropped: the ExitSet declares its points
    gc.collect()
    assert model.early_exits.attach_points == {"exit1": "layer1.0.relu1"}
    remove_filters(model)
    assert model.early_exits.exit1[0].in_channels == 8


def test_the_attach_point_can_be_given_explicitly(pruned_resnet):
    model = pruned_resnet()["model"]
    with_exits(model, exit1=CONV_BRANCH)
    remove_filters(model, exits={"exit1": "layer1.0.relu1"})
    assert model.early_exits.exit1[0].in_channels == 8


def test_a_branch_on_a_whole_stage_reads_the_stage_output_channels():
    model = create_model("resnet20_cifar", 10, 3)
    policy = with_exits(model, exit1={"attach": "layer2", "branch": ["adaptive_avgpool", "flatten", "linear"]})
    group = build_dependency_graph(model).producer_group("layer2.2.conv2")
    assert "early_exits.exit1.2" in {c.module for c in group.consumers} and group.removable
    assert policy.exit_names == ["exit1"]
