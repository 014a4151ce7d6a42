"""Cutting models into stages at the attach points: torch.fx splitting and the ``stages:`` fallback."""
import pytest
import torch
from torch import nn

from distill_ee.early_exit.multi_exit import MultiExitModel
from distill_ee.early_exit.staging import run_stages, split_model
from distill_ee.errors import DistillEEError


def test_stages_chain_back_to_the_models_output(lenet):
    modules, plan = split_model(lenet, ["conv1", "fc1"], (1, 28, 28))
    assert len(modules) == 3 and plan.num_exits == 2
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        attach_out, out = run_stages(modules, plan, x)
        assert torch.allclose(out, lenet(x))
        assert torch.allclose(attach_out[0], lenet.conv1(x))
    assert attach_out[1].shape == (5, 32)


def test_stages_share_the_models_layers(lenet):
    modules, _ = split_model(lenet, ["conv2"], (1, 28, 28))
    assert modules[0].conv1 is lenet.conv1
    assert modules[1].fc3 is lenet.fc3


def test_an_exit_inside_a_residual_block_carries_the_shortcut(resnet_cifar):
    modules, plan = split_model(resnet_cifar, ["layer2.0.bn2"], (3, 32, 32))
    # after the exit the later stage needs both the block's main path and its shortcut (down-sampled input)
    assert len(plan.carry[0]) == 2
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(run_stages(modules, plan, x)[1], resnet_cifar(x), atol=1e-5)


def test_values_not_needed_later_are_freed_and_not_carried(resnet_cifar):
    _, plan = split_model(resnet_cifar, ["layer1", "layer2"], (3, 32, 32))
    assert plan.carry == [[plan.attach[0]], [plan.attach[1]]]
    assert 0 in plan.free[0]  # the input is not needed after the first stage


class EarlySize(nn.Module):
    """Reads the batch size at the top and uses it at the end, across the exit."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 26 * 26, 4)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        n = x.size(0)
        s = self.scale * 3
        x = self.conv(x)
        return self.fc(x.view(n, -1)) * s


def test_batch_dependent_sizes_are_recomputed_after_the_batch_shrinks():
    torch.manual_seed(0)
    model = EarlySize().eval()
    modules, plan = split_model(model, ["conv"], (1, 28, 28))
    assert "size" in modules[1].code  # recomputed in the stage that uses it, not carried
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 26 * 26, 4))
    multi = MultiExitModel(modules, [head], plan, exit_names=["e"], num_classes=4).eval()
    x = torch.randn(16, 1, 28, 28)
    multi.set_thresholds([float(multi.criteria[0].entropy(multi.simulate(x)[0]).median())])
    logits, index = multi(x)
    sim_logits, sim_index = multi.decide(multi.simulate(x))
    assert 0 < int((index == 0).sum()) < 16  # some samples leave: the last stage sees a smaller batch
    assert torch.equal(index, sim_index)
    assert torch.allclose(logits, sim_logits, atol=1e-5)


class Untraceable(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.features(x))
        if x.sum() > -1e9:
            x = torch.flatten(x, 1)
        return self.classifier(x)


def test_an_untraceable_model_is_a_clear_error_suggesting_stages():
    with pytest.raises(DistillEEError, match="stages:"):
        split_model(Untraceable(), ["features"], (1, 28, 28))


def test_stages_fallback_cuts_a_sequential_like_model():
    torch.manual_seed(0)
    model = Untraceable().eval()
    modules, plan = split_model(model, ["features"], (1, 28, 28), stages=["features", "pool", "flatten",
                                                                          "classifier"])
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        attach_out, out = run_stages(modules, plan, x)
        assert torch.allclose(out, model(x))
        assert torch.allclose(attach_out[0], model.features(x))


def test_stages_that_do_not_reproduce_the_model_are_rejected():
    with pytest.raises(DistillEEError, match="stages"):
        split_model(Untraceable(), ["features"], (1, 28, 28), stages=["features", "pool", "classifier"])
    with pytest.raises(DistillEEError, match="not a top-level child"):
        split_model(Untraceable(), ["features"], (1, 28, 28), stages=["features", "head"])
    with pytest.raises(DistillEEError, match="not one of the `stages:`"):
        split_model(Untraceable(), ["pool"], (1, 28, 28), stages=["features", "flatten", "classifier"])


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, y):
        return self.fc(x + y)


class WithDefaults(nn.Module):
    """timm's ViT style: arguments after the batch that default to "not given"."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x, scale=2.0, attn_mask=None):
        return self.fc2(torch.relu(self.fc1(x)) * scale)


def test_a_forward_argument_without_a_default_is_refused_in_one_line_naming_it():
    with pytest.raises(DistillEEError, match=r"argument 'y' has no default") as err:
        split_model(TwoInputs(), ["fc"], (4,))
    assert "\n" not in str(err.value)


def test_forward_arguments_with_defaults_are_held_at_them_in_the_stages(caplog):
    model = WithDefaults().eval()
    with caplog.at_level("INFO", logger="distill_ee.early_exit.staging"):
        modules, plan = split_model(model, ["fc1"], (4,))
    assert "scale=2.0, attn_mask=None held at their defaults" in caplog.text
    x = torch.randn(5, 4)
    with torch.no_grad():
        attach_out, out = run_stages(modules, plan, x)
    assert torch.allclose(out, model(x)) and torch.allclose(attach_out[0], model.fc1(x))


class MaskBranch(WithDefaults):
    """A default of None that the forward tests, as timm's ViT does with its attention mask."""

    def forward(self, x, attn_mask=None):
        h = torch.relu(self.fc1(x))
        if attn_mask is not None:
            h = h * attn_mask
        return self.fc2(h)


def test_a_default_the_forward_tests_is_traced_as_that_default():
    model = MaskBranch().eval()
    modules, plan = split_model(model, ["fc1"], (4,))
    x = torch.randn(5, 4)
    with torch.no_grad():
        _, out = run_stages(modules, plan, x)
    assert torch.allclose(out, model(x))
