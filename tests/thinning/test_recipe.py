"""Thinning recipes: plain data in a checkpoint that turns a fresh model into the thinned one."""
import pytest
import torch

from distill_ee.checkpoint import read_checkpoint, write_checkpoint
from distill_ee.apputils.models import create_model
from distill_ee.errors import CheckpointError
from distill_ee.scheduler import CompressionScheduler
from distill_ee.thinning import apply_thinning_recipes, remove_channels, remove_filters, thinning_recipes


def evaluate(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_a_thinned_checkpoint_loads_into_a_fresh_model_and_evaluates_identically(pruned_resnet, images, tmp_path):
    run = pruned_resnet()
    model = run["model"]
    remove_filters(model, run["scheduler"].masks, run["optimizer"])
    with torch.no_grad():
        model.layer3[2].conv2.weight[:, :5] = 0
    remove_channels(model)  # a second recipe, relative to the first
    write_checkpoint(tmp_path / "ckpt.pth.tar", {"state_dict": model.state_dict(),
                                                "thinning_recipes": thinning_recipes(model)})

    ckpt = read_checkpoint(tmp_path / "ckpt.pth.tar")  # weights_only: recipes are plain data
    fresh = create_model("resnet20_cifar", 10, 3)
    apply_thinning_recipes(fresh, ckpt["thinning_recipes"])
    fresh.load_state_dict(ckpt["state_dict"])
    assert len(ckpt["thinning_recipes"]) == 2 and fresh.layer3[2].conv1.out_channels == 27
    assert torch.equal(evaluate(fresh, images), evaluate(model, images))
    assert len(thinning_recipes(fresh)) == 2  # saving the reloaded model keeps its recipes


def test_the_optimizer_and_masks_of_the_fresh_model_follow_the_recipes(pruned_resnet, images):
    run = pruned_resnet()
    remove_filters(run["model"], run["scheduler"].masks)
    fresh = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    scheduler = CompressionScheduler(fresh, optimizer)
    apply_thinning_recipes(fresh, thinning_recipes(run["model"]), optimizer, scheduler.masks)
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in params for p in fresh.parameters())
    fresh.train()
    torch.nn.functional.cross_entropy(fresh(images), torch.zeros(4, dtype=torch.long)).backward()
    scheduler.on_minibatch_end(0, 0, 1)  # masks the scheduler's (new) parameters
    optimizer.step()


def test_a_recipe_that_does_not_fit_the_model_is_a_checkpoint_error(pruned_resnet):
    run = pruned_resnet()
    remove_filters(run["model"], run["scheduler"].masks)
    recipes = thinning_recipes(run["model"])
    with pytest.raises(CheckpointError, match="lacks"):
        apply_thinning_recipes(create_model("resnet32_cifar", 10, 3).layer1, recipes)
    other = create_model("resnet20_cifar", 10, 3)
    other.layer1[0].conv1 = torch.nn.Conv2d(16, 12, 3, padding=1, bias=False)
    with pytest.raises(CheckpointError, match="recipe 1 of 1: 'layer1.0.conv1.weight' has 12 entries"):
        apply_thinning_recipes(other, recipes)


def test_a_malformed_recipe_list_is_a_checkpoint_error():
    model = create_model("lenet_mnist", 10, 1)
    with pytest.raises(CheckpointError, match="must be a list"):
        apply_thinning_recipes(model, {"modules": {}, "tensors": {}})
    with pytest.raises(CheckpointError, match="'modules' and 'tensors'"):
        apply_thinning_recipes(model, [{"layers": {}}])
    bad = {"modules": {}, "tensors": {"conv1.weight": [[0, 20, torch.tensor([0, 25])]]}}
    with pytest.raises(CheckpointError, match="outside 0..19"):
        apply_thinning_recipes(model, [bad])


def test_applying_the_same_recipes_twice_changes_nothing_the_second_time(pruned_resnet, images):
    run = pruned_resnet()
    model = run["model"]
    remove_filters(model, run["scheduler"].masks)
    before = evaluate(model, images)
    apply_thinning_recipes(model, thinning_recipes(model))
    assert torch.equal(evaluate(model, images), before) and model.layer1[0].conv1.out_channels == 8
    assert len(thinning_recipes(model)) == 1
