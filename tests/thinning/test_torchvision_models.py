"""Thinning torchvision's MobileNetV3, EfficientNet and RegNet: squeeze-and-excite, depthwise and grouped
convolutions lose their zero channels, and the thinned model computes what its masked self computed."""
import copy
from typing import Dict, List

import pytest
import torch
from torch import nn

from distill_ee.early_exit.exits import EarlyExits
from distill_ee.thinning import build_dependency_graph, remove_filters
from distill_ee.thinning.remove import Kept
from support import exit_logits, randomize_batch_norms

torchvision = pytest.importorskip("torchvision")

#: the convolutions whose first filters are zeroed: SE-feeding expansions (their channels cross a depthwise
#: convolution and are multiplied by the SE scale), SE squeezes, and 1x1 convolutions feeding a grouped one
TARGETS = {
    "mobilenet_v3_large": ["features.2.block.0.0", "features.4.block.0.0", "features.5.block.2.fc1",
                           "features.12.block.0.0"],
    "efficientnet_b0": ["features.2.0.block.0.0", "features.3.1.block.0.0", "features.4.0.block.2.fc1"],
    "regnet_y_400mf": ["trunk_output.block1.block1-0.f.a.0", "trunk_output.block2.block2-1.f.a.0",
                       "trunk_output.block3.block3-0.f.se.fc1"],
}
ZEROED = 8  # one whole group of regnet_y_400mf's grouped convolutions (group width 8)


def build(arch: str) -> nn.Module:
    """A fresh torchvision model with trained-looking batch norms, in eval mode."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    randomize_batch_norms(model)
    return model.eval()


def zero_filters(model: nn.Module, convs: List[str], count: int = ZEROED) -> None:
    """Zero the first ``count`` filters of each conv, its bias there, and the shift of the batch norms on their way
    (what training with those filters masked from the start leaves), so the dense model's channels are zero."""
    modules = dict(model.named_modules())
    graph = build_dependency_graph(model)
    with torch.no_grad():
        for name in convs:
            conv = modules[name]
            conv.weight[:count] = 0
            if conv.bias is not None:
                conv.bias[:count] = 0
            for layer in graph.producer_group(name).per_channel:
                if isinstance(modules[layer], nn.BatchNorm2d):
                    modules[layer].bias[:count] = 0
                    modules[layer].running_mean[:count] = 0


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def out_channels(model: nn.Module, names: List[str]) -> Dict[str, int]:
    modules = dict(model.named_modules())
    return {n: modules[n].out_channels for n in names}


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_zero_filters_leave_the_model_and_its_outputs_stay(arch, x):
    model = build(arch)
    zero_filters(model, TARGETS[arch])
    before = out_channels(model, TARGETS[arch])
    dense = copy.deepcopy(model)
    remove_filters(model)
    after = out_channels(model, TARGETS[arch])
    assert after == {n: c - ZEROED for n, c in before.items()}
    assert torch.allclose(outputs(model, x), outputs(dense, x), rtol=1e-5, atol=1e-5)


def test_a_squeeze_and_excite_block_loses_the_channels_its_input_lost():
    model = build("mobilenet_v3_large")
    zero_filters(model, ["features.4.block.0.0"])
    remove_filters(model)
    block = model.features[4].block
    assert block[1][0].out_channels == block[1][0].groups == 72 - ZEROED  # the depthwise convolution
    assert block[2].fc1.in_channels == block[2].fc2.out_channels == 72 - ZEROED
    assert block[3][0].in_channels == 72 - ZEROED


def test_a_grouped_convolution_loses_whole_groups():
    model = build("regnet_y_400mf")
    zero_filters(model, ["trunk_output.block2.block2-1.f.a.0"])
    f = model.trunk_output.block2[1].f
    groups, width = f.b[0].groups, f.b[0].in_channels // f.b[0].groups
    assert width == ZEROED
    remove_filters(model)
    assert (f.b[0].groups, f.b[0].in_channels // f.b[0].groups) == (groups - 1, width)
    assert f.a[0].out_channels == f.b[0].out_channels == f.c[0].in_channels == (groups - 1) * width
    assert f.b[0].weight.shape == ((groups - 1) * width, width, 3, 3)


def test_part_of_a_group_is_kept_and_said_why(x):
    model = build("regnet_y_400mf")
    zero_filters(model, ["trunk_output.block2.block2-1.f.a.0"], count=ZEROED // 2)
    before = model.trunk_output.block2[1].f.a[0].out_channels
    kept: List[Kept] = []
    remove_filters(model, kept=kept)
    assert model.trunk_output.block2[1].f.a[0].out_channels == before
    [entry] = kept
    assert entry.module == "trunk_output.block2.block2-1.f.a.0" and entry.count == ZEROED // 2
    assert "whole groups of 8 channels" in entry.reason


def test_a_filter_feeding_only_a_sigmoid_product_is_kept():
    model = build("mobilenet_v3_large")
    zero_filters(model, ["features.4.block.2.fc2"])  # hardsigmoid(0) = 0.5: the scale is not zero there
    kept: List[Kept] = []
    remove_filters(model, kept=kept)
    assert model.features[4].block[2].fc2.out_channels == 72
    [entry] = kept
    assert entry.module == "features.4.block.2.fc2" and "scaled" in entry.reason


def test_a_target_behind_an_unknown_operation_is_kept_and_said_why():
    model = build("efficientnet_b0")
    zero_filters(model, ["features.3.1.block.3.0"])  # its output goes through torchvision's stochastic_depth
    kept: List[Kept] = []
    remove_filters(model, kept=kept)
    assert model.features[3][1].block[3][0].out_channels == 40
    assert any(k.module == "features.3.1.block.3.0" and "stochastic_depth" in k.reason for k in kept)


def test_exits_reading_a_squeeze_and_excite_block_follow_and_compute_the_same_logits(x):
    model = build("mobilenet_v3_large")
    EarlyExits.from_config({"exits": {"exit1": {
        "attach": "features.4.block.1", "branch": [{"type": "conv", "out_channels": 8, "kernel_size": 3}, "relu",
                                                  "adaptive_avgpool", "flatten", "linear"]}}},
        model, num_classes=10, input_shape=(3, 64, 64))
    zero_filters(model, TARGETS["mobilenet_v3_large"])
    dense = exit_logits(model, x)
    remove_filters(model)
    assert model.early_exits.exit1[0].in_channels == 72 - ZEROED
    for before, after in zip(dense, exit_logits(model, x)):
        assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)


#: an exit reading a block whose channels the TARGETS thin (its branch's first conv loses them too)
EXIT_AT = {"mobilenet_v3_large": ("features.4.block.1", 72), "efficientnet_b0": ("features.2.0.block.1", 96),
           "regnet_y_400mf": ("trunk_output.block1.block1-0.f.b", 48)}


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_each_model_thinned_with_an_exit_computes_its_masked_selfs_exit_and_final_logits(arch, x):
    model = build(arch)
    attach, channels = EXIT_AT[arch]
    EarlyExits.from_config({"exits": {"exit1": {
        "attach": attach, "branch": [{"type": "conv", "out_channels": 8, "kernel_size": 3}, "relu",
                                     "adaptive_avgpool", "flatten", "linear"]}}},
        model, num_classes=10, input_shape=(3, 64, 64))
    assert model.early_exits.exit1[0].in_channels == channels
    zero_filters(model, TARGETS[arch])
    dense = exit_logits(model, x)
    remove_filters(model)
    assert model.early_exits.exit1[0].in_channels == channels - ZEROED
    for before, after in zip(dense, exit_logits(model, x)):
        assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)
