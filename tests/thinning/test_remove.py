"""remove_filters / remove_channels: zero structures leave the model physically, every consumer follows."""
import copy
import pytest
import torch
from torch import nn

from distill_ee.apputils.models import create_model
from distill_ee.errors import ThinningError
from distill_ee.pruning.masks import create_masks
from distill_ee.thinning import remove_channels, remove_filters, thinning_recipes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_half_the_block_filters_go_and_the_outputs_stay(pruned_resnet, images):
    run = pruned_resnet()
    model = run["model"]
    dense = copy.deepcopy(model)
    before = n_params(model)
    remove_filters(model, run["scheduler"].masks, run["optimizer"])
    block = model.layer2[1]
    assert (block.conv1.out_channels, block.bn1.num_features, block.conv2.in_channels) == (16, 16, 16)
    assert block.conv1.weight.shape == (16, 32, 3, 3) and block.conv2.weight.shape == (32, 16, 3, 3)
    assert block.bn1.running_mean.shape == (16,)
    assert n_params(model) < 0.55 * before
    assert torch.allclose(outputs(model, images), outputs(dense, images), rtol=1e-5, atol=1e-5)


def test_the_optimizer_follows_and_training_goes_on(pruned_resnet, images, kit):
    run = pruned_resnet()
    model, optimizer, scheduler = run["model"], run["optimizer"], run["scheduler"]
    kit.train_step(model, optimizer, scheduler, images)  # momentum buffers exist before thinning
    momentum = optimizer.state[model.layer1[0].conv1.weight]["momentum_buffer"].clone()
    keep = model.layer1[0].conv1.weight.reshape(16, -1).abs().sum(dim=1).nonzero().flatten()
    remove_filters(model, scheduler.masks, optimizer)

    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        assert id(param) in in_optimizer, name
        assert optimizer.state[param]["momentum_buffer"].shape == param.shape, name
        assert scheduler.masks[name].mask is None or scheduler.masks[name].mask.shape == param.shape, name
    assert torch.equal(optimizer.state[model.layer1[0].conv1.weight]["momentum_buffer"], momentum[keep])
    losses = [kit.train_step(model, optimizer, scheduler, images) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert model.layer1[0].conv1.weight.shape == (8, 16, 3, 3)


def test_the_recipe_says_what_was_kept_and_is_remembered_by_the_model(pruned_resnet):
    run = pruned_resnet()
    model = run["model"]
    keep = model.layer3[0].conv1.weight.reshape(64, -1).abs().sum(dim=1).nonzero().flatten()
    recipe = remove_filters(model, run["scheduler"].masks)
    assert recipe["modules"]["layer3.0.conv1"] == {"out_channels": 32}
    assert recipe["modules"]["layer3.0.conv2"] == {"in_channels": 32}
    [[dim, size, kept]] = recipe["tensors"]["layer3.0.bn1.running_var"]
    assert (dim, size) == (0, 64) and torch.equal(kept, keep)
    assert thinning_recipes(model) == [recipe]


def test_nothing_to_remove_gives_an_empty_recipe():
    model = create_model("resnet20_cifar", 10, 3)
    recipe = remove_filters(model)
    assert recipe == {"modules": {}, "tensors": {}} and thinning_recipes(model) == []


def test_masks_count_as_zeros_even_when_the_weights_are_not():
    model = create_model("lenet_mnist", 10, 1)
    masks = create_masks(model)
    mask = torch.ones_like(model.conv1.weight)
    mask[:5] = 0
    masks["conv1.weight"].mask = mask
    remove_filters(model, masks)
    assert model.conv1.out_channels == 15 and masks["conv1.weight"].mask.shape == (15, 1, 5, 5)


def test_a_conv_feeding_a_linear_layer_through_flatten_loses_whole_feature_blocks():
    torch.manual_seed(0)
    model = create_model("lenet_mnist", 10, 1)
    with torch.no_grad():
        model.conv2.weight[[3, 7, 20]] = 0
        model.conv2.bias[[3, 7, 20]] = 0
    dense = copy.deepcopy(model)
    x = torch.randn(2, 1, 28, 28)
    remove_filters(model)
    assert model.conv2.out_channels == 47
    assert model.fc1.in_features == 47 * 16 and model.fc1.weight.shape == (500, 47 * 16)
    kept = [c for c in range(50) if c not in (3, 7, 20)]
    columns = torch.tensor([c * 16 + j for c in kept for j in range(16)])
    assert torch.equal(model.fc1.weight, dense.fc1.weight[:, columns])
    assert torch.allclose(outputs(model, x), outputs(dense, x), rtol=1e-5, atol=1e-6)


def test_linear_layers_lose_zero_rows_and_the_next_layer_their_columns():
    model = create_model("lenet_mnist", 10, 1)
    with torch.no_grad():
        model.fc1.weight[:100] = 0
        model.fc1.bias[:100] = 0
    remove_filters(model)
    assert model.fc1.weight.shape == (400, 800) and model.fc2.weight.shape == (10, 400)


def test_a_residual_sum_keeps_a_channel_unless_every_term_lost_it(thinning_log):
    model = create_model("resnet20_cifar", 10, 3)
    with torch.no_grad():
        model.layer1[0].conv2.weight[:4] = 0
    recipe = remove_filters(model)
    assert recipe["tensors"] == {} and model.layer1[0].conv2.out_channels == 16
    assert "keeping 4 zero filters of 'layer1.0.conv2'" in thinning_log.text
    assert "layer1.1.conv2" in thinning_log.text


def test_a_whole_residual_stage_thins_when_all_its_convs_drop_the_same_channels(images, kit):
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", 10, 3)
    kit.randomize_batch_norms(model)
    stage = ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.2.conv2"]
    gone = [1, 5, 6, 30]
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in stage:
            modules[name].weight[gone] = 0
        for bn in ("layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2", "layer2.2.bn2"):
            modules[bn].bias[gone] = 0
            modules[bn].running_mean[gone] = 0
    dense = copy.deepcopy(model)
    remove_filters(model)
    for name in stage:
        assert modules[name].out_channels == 28
    assert model.layer2[0].downsample[1].num_features == 28
    assert model.layer3[0].conv1.in_channels == 28 and model.layer3[0].downsample[0].in_channels == 28
    assert model.layer2[1].conv1.in_channels == 28
    assert torch.allclose(outputs(model, images), outputs(dense, images), rtol=1e-5, atol=1e-5)


def test_the_model_output_is_never_thinned(thinning_log):
    model = create_model("lenet_mnist", 10, 1)
    with torch.no_grad():
        model.fc2.weight[3] = 0
    remove_filters(model)
    assert model.fc2.out_features == 10
    assert "keeping 1 zero filters of 'fc2'" in thinning_log.text and "model's output" in thinning_log.text


def test_a_layer_whose_every_filter_is_zero_is_refused_before_anything_changes():
    model = create_model("lenet_mnist", 10, 1)
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv2.weight[:5] = 0
    with pytest.raises(ThinningError, match=r"every filter of 'conv1' is zero.*remove the layer") as err:
        remove_filters(model)
    assert "\n" not in str(err.value)
    assert model.conv1.out_channels == 20 and model.conv2.out_channels == 50


def test_a_layer_whose_every_input_channel_is_ignored_is_refused():
    model = create_model("lenet_mnist", 10, 1)
    with torch.no_grad():
        model.conv2.weight.zero_()
    with pytest.raises(ThinningError, match="every input channel of 'conv2' is zero"):
        remove_channels(model)
    assert model.conv2.in_channels == 20


def test_dropping_a_nonzero_batch_norm_shift_is_reported(pruned_resnet, thinning_log):
    run = pruned_resnet()
    model = run["model"]
    with torch.no_grad():
        model.layer1[0].bn1.bias.fill_(0.3)
    remove_filters(model, run["scheduler"].masks)
    assert "layer1.0.bn1" in thinning_log.text and "not zero in the dense model" in thinning_log.text


def test_remove_channels_drops_ignored_inputs_and_the_filters_that_computed_them(images, kit):
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", 10, 3)
    kit.randomize_batch_norms(model)  # exact even with nonzero shifts: nobody reads the removed channels
    with torch.no_grad():
        model.layer1[2].conv2.weight[:, [0, 2, 4, 9, 11]] = 0
    dense = copy.deepcopy(model)
    remove_channels(model)
    assert model.layer1[2].conv1.out_channels == 11 and model.layer1[2].bn1.num_features == 11
    assert model.layer1[2].conv2.in_channels == 11
    assert torch.allclose(outputs(model, images), outputs(dense, images), rtol=1e-5, atol=1e-5)


def test_remove_channels_keeps_a_channel_some_consumer_still_reads():
    model = create_model("resnet20_cifar", 10, 3)
    with torch.no_grad():
        model.layer2[1].conv1.weight[:, :3] = 0  # the stage's other consumers still read channels 0..2
    recipe = remove_channels(model)
    assert recipe["tensors"] == {} and model.layer2[1].conv1.in_channels == 32


def test_channels_of_the_model_input_are_never_removed():
    model = create_model("lenet_mnist", 10, 1)
    with torch.no_grad():
        model.fc1.weight[:, :32] = 0  # channels 0 and 1 of conv2's output (16 features each)
        model.conv1.weight[:, 0] = 0  # the only input channel: kept
    remove_channels(model)
    assert model.conv1.in_channels == 1
    assert model.conv2.out_channels == 48 and model.fc1.in_features == 48 * 16


def test_masked_dense_training_and_thinned_training_take_the_same_step(pruned_resnet, images, kit):
    run = pruned_resnet()
    model, optimizer, scheduler = run["model"], run["optimizer"], run["scheduler"]
    twin = pruned_resnet()
    remove_filters(model, scheduler.masks, optimizer)
    loss_thin = kit.train_step(model, optimizer, scheduler, images)
    loss_dense = kit.train_step(twin["model"], twin["optimizer"], twin["scheduler"], images)
    assert loss_thin == pytest.approx(loss_dense, rel=1e-4)
    assert torch.allclose(outputs(model, images), outputs(twin["model"], images), rtol=1e-4, atol=1e-4)


def test_block_conv1_fixture_prunes_what_it_claims(pruned_resnet, kit):
    model = pruned_resnet()["model"]
    for name in kit.block_conv1:
        w = dict(model.named_parameters())[name]
        assert int((w.reshape(w.size(0), -1).abs().sum(dim=1) == 0).sum()) == w.size(0) // 2


def test_silence_helper_only_touches_zero_channels(kit):
    model = create_model("resnet20_cifar", 10, 3)
    kit.randomize_batch_norms(model)
    before = model.layer1[0].bn1.bias.clone()
    with torch.no_grad():
        model.layer1[0].conv1.weight[2] = 0
    kit.silence_zero_channels(model, ["layer1.0.conv1.weight"])
    changed = (model.layer1[0].bn1.bias != before).nonzero().flatten().tolist()
    assert changed == [2]


def test_adam_state_and_gradient_masking_hooks_follow_the_new_parameters(images):
    model = create_model("resnet20_cifar", 10, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    masks = create_masks(model)
    weight = model.layer1[0].conv1.weight
    mask = torch.ones_like(weight)
    mask[:8] = 0  # whole filters: thinned away
    mask[8:, :, 0, 0] = 0  # single elements of kept filters: stay masked
    masker = masks["layer1.0.conv1.weight"]
    masker.mask, masker.mask_on_forward_only, masker.mask_gradients = mask, True, True
    masker.ensure_gradient_hook(weight)
    masker.apply_mask(weight)
    nn.functional.cross_entropy(model(images), torch.zeros(4, dtype=torch.long)).backward()
    optimizer.step()
    remove_filters(model, masks, optimizer)

    new = model.layer1[0].conv1.weight
    assert new.shape == (8, 16, 3, 3) and masker.mask.shape == new.shape
    assert {k: v.shape for k, v in optimizer.state[new].items() if k != "step"} == \
        {"exp_avg": new.shape, "exp_avg_sq": new.shape}
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), torch.zeros(4, dtype=torch.long)).backward()
    assert torch.all(new.grad[:, :, 0, 0] == 0) and new.grad.abs().sum() > 0
    optimizer.step()


def test_a_data_parallel_wrapper_is_seen_through():
    model = nn.DataParallel(create_model("resnet20_cifar", 10, 3))
    with torch.no_grad():
        model.module.layer1[0].conv1.weight[:4] = 0
    recipe = remove_filters(model)
    assert set(recipe["modules"]) == {"module.layer1.0.conv1", "module.layer1.0.bn1", "module.layer1.0.conv2"}
    assert model.module.layer1[0].conv2.in_channels == 12
