"""Batch norms fused with their activation (timm's BatchNormAct2d) and functional batch norms on a module's own
statistics are per-channel layers to thinning: their channels go with the filters before them."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from distill_ee.thinning import build_dependency_graph, remove_filters


class BatchNormAct2d(nn.BatchNorm2d):
    """What timm's BatchNormAct2d is: a BatchNorm2d subclass whose forward calls F.batch_norm, then an activation."""

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training or not self.track_running_stats, self.momentum or 0.0, self.eps)
        return self.act(x)


class WithNormAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = BatchNormAct2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.bn1(self.conv1(x)))


class FunctionalNorm(nn.Module):
    """A forward that calls F.batch_norm on a batch norm module's tensors itself (fx always inlines this)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        bn = self.bn1
        y = F.batch_norm(self.conv1(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, bn.eps)
        return self.conv2(F.relu(y))


def thinned_equals_masked(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        model.conv1.weight[:3] = 0
        model.conv1.bias[:3] = 0
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 1.5)
        model.bn1.running_mean[:3] = 0
        model.bn1.bias[:3] = 0
    model.eval()
    dense = copy.deepcopy(model)
    remove_filters(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), dense(x), rtol=1e-5, atol=1e-5)
    return model


def test_a_fused_norm_activation_is_a_per_channel_layer_and_loses_the_zero_channels():
    group = build_dependency_graph(WithNormAct()).producer_group("conv1")
    assert group.per_channel == ["bn1"] and group.removable
    model = thinned_equals_masked(WithNormAct())
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == (5, 5, 5)
    assert model.bn1.running_mean.shape == (5,)


def test_a_functional_batch_norm_on_a_modules_statistics_is_thinned_with_it():
    group = build_dependency_graph(FunctionalNorm()).producer_group("conv1")
    assert group.per_channel == ["bn1"] and group.removable
    model = thinned_equals_masked(FunctionalNorm())
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == (5, 5, 5)
