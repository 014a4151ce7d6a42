"""The channel dependency graph: which layers produce, carry and read each set of channels."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_ee.apputils.models import create_model
from distill_ee.errors import DistillEEError
from distill_ee.thinning import build_dependency_graph


def consumers(group):
    return {c.module: c.factor for c in group.consumers}


def test_a_basic_block_conv1_feeds_only_its_batch_norm_and_conv2():
    graph = build_dependency_graph(create_model("resnet20_cifar", 10, 3))
    group = graph.producer_group("layer2.1.conv1")
    assert group.producers == ["layer2.1.conv1"] and group.per_channel == ["layer2.1.bn1"]
    assert consumers(group) == {"layer2.1.conv2": 1}
    assert group.channels == 32 and group.removable


def test_residual_sums_tie_a_whole_stage_together_downsample_included():
    graph = build_dependency_graph(create_model("resnet20_cifar", 10, 3))
    group = graph.producer_group("layer2.0.downsample.0")
    assert set(group.producers) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.2.conv2"}
    assert set(group.per_channel) == {"layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2", "layer2.2.bn2"}
    assert consumers(group) == {"layer2.1.conv1": 1, "layer2.2.conv1": 1, "layer3.0.conv1": 1,
                                "layer3.0.downsample.0": 1}
    assert graph.consumer_group("layer3.0.downsample.0") is group


def test_the_last_stage_feeds_the_classifier_and_the_classifier_feeds_the_output():
    graph = build_dependency_graph(create_model("resnet20_cifar", 10, 3))
    assert consumers(graph.producer_group("layer3.2.conv2"))["fc"] == 1
    assert graph.producer_group("fc").blocked == "they are the model's output"
    assert graph.consumer_group("conv1").blocked == "they are the model's input"


def test_a_flatten_turns_each_channel_into_a_block_of_features():
    graph = build_dependency_graph(create_model("lenet_mnist", 10, 1))
    assert consumers(graph.producer_group("conv2")) == {"fc1": 16}
    assert consumers(graph.producer_group("fc1")) == {"fc2": 1}


class Functional(nn.Module):
    """Functional ops, ``view(n, -1)`` and an in-forward sum, as plain models write them."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.a(x) + self.b(x)))
        y = F.max_pool2d(self.c(y), 2)
        return self.fc(y.view(y.size(0), -1))


def test_functional_ops_and_view_are_understood():
    graph = build_dependency_graph(Functional())
    group = graph.producer_group("a")
    assert group.producers == ["a", "b"] and group.per_channel == ["bn"] and group.removable
    assert consumers(graph.producer_group("c")) == {"fc": 16}


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.grouped = nn.Conv2d(8, 4, 3, groups=2)  # groups of 4 input channels make 2 output channels each
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.grouped(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(y.mean(dim=(2, 3)))


def test_concatenation_grouped_convolutions_and_unknown_reductions_block_their_channels():
    graph = build_dependency_graph(Concat())
    assert "cat" in graph.producer_group("a").blocked
    assert "grouped convolution" in graph.producer_group("grouped").blocked


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(self.dw(self.pw(x)))


def test_a_depthwise_convolution_carries_its_input_channels():
    graph = build_dependency_graph(Depthwise())
    group = graph.producer_group("pw")
    assert group.per_channel == ["dw"] and consumers(group) == {"out": 1} and group.removable


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


def test_a_model_fx_cannot_trace_is_a_clear_error():
    with pytest.raises(DistillEEError, match="torch.fx can trace"):
        build_dependency_graph(Untraceable())
