"""Distiller's model-zoo names build here with Distiller's layer names and parameter counts.

Distiller's example schedules name layers (``layer1.0.pre_relu``, ``features.0``, ``module.model.4.3.weight``);
these models keep its module tree, so the schedules apply unchanged. Expected parameter counts are computed
here from each architecture's definition (layer by layer), not taken from the models under test.
"""
from typing import List, Tuple

import pytest
import torch
import torch.fx
from torch import nn

from distill_ee.apputils.models import create_model, list_models
from distill_ee.apputils.models.registry import MODELS
from distill_ee.apputils.models.torchvision_models import TorchvisionModel
from distill_ee.errors import ConfigError

CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)
CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
IMAGENET_PREACT = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
                   101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}
MOBILENET_WIDTHS = {"mobilenet": 1.0, "mobilenet_025": 0.25, "mobilenet_050": 0.5, "mobilenet_075": 0.75}

CIFAR_NAMES = (["plain20_cifar", "plain20_cifar_nobn"]
               + [f"preact_resnet{d}_cifar{ds}" for d in CIFAR_DEPTHS for ds in ("", "_conv_ds")])
IMAGENET_NAMES = [f"preact_resnet{d}" for d in IMAGENET_PREACT] + ["alexnet_bn"] + list(MOBILENET_WIDTHS)
# Over about two seconds on a shared CPU: build and forward only in the slow run.
HEAVY = {"preact_resnet110_cifar", "preact_resnet110_cifar_conv_ds", "preact_resnet34", "preact_resnet50",
         "preact_resnet101", "preact_resnet152"}


def _cases(names: List[str], shape: Tuple[int, int, int]) -> list:
    return [pytest.param(n, shape, id=n, marks=[pytest.mark.slow] if n in HEAVY else []) for n in names]


def conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> int:
    """Parameters of a k x k convolution."""
    return cin // groups * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    """Parameters of a batch norm (scale and shift)."""
    return 2 * c


def linear(fin: int, fout: int, bias: bool = True) -> int:
    """Parameters of a Linear layer."""
    return fin * fout + (fout if bias else 0)


def plain_cifar_params(blocks: int, batch_norm: bool, num_classes: int = 10) -> int:
    """Stem conv(-bn), three stages of conv-bn-relu-conv-bn-relu blocks (16, 32, 64 wide), fc."""
    total = conv(3, 16, 3) + (bn(16) if batch_norm else 0)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(blocks):
            total += conv(cin, width, 3) + conv(width, width, 3) + (2 * bn(width) if batch_norm else 0)
            cin = width
    return total + linear(64, num_classes)


def preact_cifar_params(blocks: int, conv_downsample: bool, num_classes: int = 10) -> int:
    """Stem conv, blocks of pre_bn/conv1/bn/conv2 (a 1x1 conv shortcut where the shape changes with
    conv_downsample, a parameter-free pooled shortcut otherwise), final_bn, fc."""
    total = conv(3, 16, 3)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(blocks):
            total += bn(cin) + conv(cin, width, 3) + bn(width) + conv(width, width, 3)
            if conv_downsample and cin != width:
                total += conv(cin, width, 1)
            cin = width
    return total + bn(64) + linear(64, num_classes)


def preact_imagenet_params(kind: str, layers: List[int], num_classes: int = 1000) -> int:
    """7x7 stem with bn, four stages (64..512 wide; bottlenecks 4x wider out), final_bn, fc.

    Every block pre-activates (pre_bn) except the first of layer1; the first block of a stage has a 1x1 conv
    shortcut when the shape changes.
    """
    expansion = 1 if kind == "basic" else 4
    total = conv(3, 64, 7) + bn(64)
    cin = 64
    for stage, (width, count) in enumerate(zip((64, 128, 256, 512), layers)):
        for i in range(count):
            first = i == 0
            if not (first and stage == 0):
                total += bn(cin)
            if kind == "basic":
                total += conv(cin, width, 3) + bn(width) + conv(width, width, 3)
            else:
                total += conv(cin, width, 1) + bn(width) + conv(width, width, 3) + bn(width) + conv(width, 4 * width, 1)
            if first and (stage > 0 or cin != width * expansion):
                total += conv(cin, width * expansion, 1)
            cin = width * expansion
    return total + bn(512 * expansion) + linear(512 * expansion, num_classes)


def alexnet_bn_params(num_classes: int = 1000) -> int:
    """TensorPack's DoReFa AlexNet: a biased 12x12 stem conv, four bias-free convs (three grouped in two) with
    batch norms, two bias-free 4096-wide Linear layers with batch norms, and the classifier."""
    convs = (conv(3, 96, 12, bias=True) + conv(96, 256, 5, groups=2) + conv(256, 384, 3)
             + conv(384, 384, 3, groups=2) + conv(384, 256, 3, groups=2))
    norms = bn(256) + bn(384) + bn(384) + bn(256) + bn(4096) + bn(4096)
    fcs = linear(256 * 6 * 6, 4096, bias=False) + linear(4096, 4096, bias=False) + linear(4096, num_classes)
    return convs + norms + fcs


def mobilenet_widths(multiplier: float) -> List[int]:
    """MobileNet v1's channel counts: 32..1024 times the multiplier, rounded down, at least 8."""
    return [max(int(n * multiplier), 8) for n in (32, 64, 128, 256, 512, 1024)]


def mobilenet_params(multiplier: float, num_classes: int = 1000) -> int:
    """Strided 3x3 stem conv-bn, thirteen depthwise(3x3)-bn + pointwise(1x1)-bn blocks, fc."""
    c = mobilenet_widths(multiplier)
    plan = [(0, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 4)] + [(4, 4)] * 5 + [(4, 5), (5, 5)]
    total = conv(3, c[0], 3) + bn(c[0])
    for i, o in plan:
        total += conv(c[i], c[i], 3, groups=c[i]) + bn(c[i]) + conv(c[i], c[o], 1) + bn(c[o])
    return total + linear(c[5], num_classes)


def expected_params(arch: str) -> int:
    """The parameter count of Distiller's definition of ``arch`` (10 CIFAR or 1000 ImageNet classes)."""
    if arch.startswith("plain20_cifar"):
        return plain_cifar_params(3, batch_norm=not arch.endswith("_nobn"))
    if arch.startswith("preact_resnet") and "_cifar" in arch:
        depth = int(arch[len("preact_resnet"):arch.index("_cifar")])
        return preact_cifar_params(CIFAR_DEPTHS[depth], conv_downsample=arch.endswith("_conv_ds"))
    if arch.startswith("preact_resnet"):
        return preact_imagenet_params(*IMAGENET_PREACT[int(arch[len("preact_resnet"):])])
    if arch == "alexnet_bn":
        return alexnet_bn_params()
    return mobilenet_params(MOBILENET_WIDTHS[arch])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,shape", _cases(CIFAR_NAMES, CIFAR) + _cases(IMAGENET_NAMES, IMAGENET))
def test_distiller_architecture_builds_and_classifies_its_datasets_images(arch, shape):
    torch.manual_seed(0)
    classes = 10 if shape == CIFAR else 1000
    model = create_model(arch, num_classes=classes, in_channels=3).eval()
    batch = 2 if shape == CIFAR else 1
    with torch.no_grad():
        assert model(torch.randn(batch, *shape)).shape == (batch, classes)


@pytest.mark.parametrize("arch", [pytest.param(n, marks=[pytest.mark.slow] if n in {"preact_resnet101",
                                                                                    "preact_resnet152"} else [])
                                  for n in CIFAR_NAMES + IMAGENET_NAMES])
def test_distiller_architecture_has_the_parameter_count_of_distillers_definition(arch):
    classes = 10 if "cifar" in arch else 1000
    assert n_params(create_model(arch, num_classes=classes, in_channels=3)) == expected_params(arch)


def test_parameter_counts_match_the_published_sizes():
    # ~0.27M for the 20-layer CIFAR networks (He et al. 2016); 4.2M for MobileNet v1 (Howard et al. 2017).
    assert expected_params("plain20_cifar") == 269_722
    assert expected_params("preact_resnet20_cifar") == 269_722
    assert expected_params("mobilenet") == 4_231_976


@pytest.mark.parametrize("arch", ["plain20_cifar", "preact_resnet20_cifar", "preact_resnet20_cifar_conv_ds",
                                  "mobilenet_025", "alexnet_bn"])
def test_distiller_architecture_traces_to_the_same_outputs(arch):
    shape = CIFAR if "cifar" in arch else IMAGENET
    model = create_model(arch, num_classes=10, in_channels=3).eval()
    x = torch.randn(1, *shape)
    with torch.no_grad():
        assert torch.allclose(torch.fx.symbolic_trace(model)(x), model(x))


def _modules(arch: str, num_classes: int = 10) -> dict:
    return dict(create_model(arch, num_classes=num_classes, in_channels=3).named_modules())


def test_plain20_has_distillers_layer_names_and_no_shortcuts():
    modules = _modules("plain20_cifar")
    for name in ("conv1", "bn1", "relu", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu1", "layer1.0.conv2",
                 "layer1.0.bn2", "layer1.0.relu2", "layer3.2.conv2", "avgpool", "fc"):
        assert name in modules
    assert not any("downsample" in name for name in modules)
    assert modules["layer2.0.conv1"].stride == (2, 2)


def test_plain20_without_batch_norm_has_no_batch_norms():
    modules = _modules("plain20_cifar_nobn")
    assert "layer1.0.conv1" in modules
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules.values())


def test_preact_resnet_cifar_has_distillers_layer_names():
    modules = _modules("preact_resnet20_cifar")
    for name in ("conv1", "layer1.0.pre_bn", "layer1.0.pre_relu", "layer1.0.conv1", "layer1.0.bn", "layer1.0.relu",
                 "layer1.0.conv2", "layer3.2.pre_relu", "final_bn", "final_relu", "avgpool", "fc"):
        assert name in modules
    assert "bn1" not in modules  # the stem is a bare convolution: layer1.0 pre-activates it


def test_preact_resnet_cifar_shortcut_pools_and_zero_pads_channels():
    modules = _modules("preact_resnet20_cifar")
    assert modules["layer1.0"].downsample is None
    assert isinstance(modules["layer2.0.downsample.0"], nn.AvgPool2d)
    assert isinstance(modules["layer2.0.downsample.1"], nn.ConstantPad3d)
    shortcut = modules["layer2.0.downsample"](torch.randn(1, 16, 32, 32))
    assert shortcut.shape == (1, 32, 16, 16)
    assert torch.count_nonzero(shortcut[:, :8]) == 0 and torch.count_nonzero(shortcut[:, 24:]) == 0


def test_preact_resnet_cifar_conv_ds_shortcut_is_a_strided_1x1_convolution():
    modules = _modules("preact_resnet20_cifar_conv_ds")
    ds = modules["layer3.0.downsample"]
    assert isinstance(ds, nn.Conv2d)
    assert (ds.in_channels, ds.out_channels, ds.kernel_size, ds.stride) == (32, 64, (1, 1), (2, 2))


def test_preact_resnet_imagenet_has_distillers_layer_names():
    basic = _modules("preact_resnet18")
    for name in ("conv1", "bn1", "relu1", "maxpool", "layer1.0.conv1", "layer1.0.bn1_2", "layer1.0.relu1_2",
                 "layer1.1.pre_bn", "layer2.0.pre_bn", "layer2.0.pre_relu", "layer2.0.downsample.0",
                 "layer4.1.conv2", "final_bn", "final_relu", "avgpool", "fc"):
        assert name in basic
    assert "layer1.0.pre_bn" not in basic  # the stem's bn-relu pre-activates the first block
    assert basic["layer1.0"].downsample is None


def test_preact_resnet_imagenet_bottlenecks_have_distillers_layer_names():
    bottleneck = _modules("preact_resnet50")
    for name in ("layer1.0.bn1_2", "layer1.0.bn2_3", "layer1.0.relu2_3", "layer1.0.conv3", "layer1.0.downsample.0",
                 "layer3.5.pre_bn"):
        assert name in bottleneck
    assert "layer1.0.pre_bn" not in bottleneck
    assert bottleneck["layer2.0.conv2"].stride == (2, 2)


def test_alexnet_bn_has_distillers_layer_order():
    modules = _modules("alexnet_bn", 1000)
    stem, last = modules["features.0"], modules["classifier.6"]
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (12, 12) and stem.stride == (4, 4)
    assert [modules[f"features.{i}"].groups for i in (2, 6, 10, 13)] == [2, 1, 2, 2]
    assert isinstance(modules["features.16"], nn.ReLU) and "features.17" not in modules
    assert isinstance(modules["classifier.1"], nn.BatchNorm1d)
    assert isinstance(last, nn.Linear) and (last.in_features, last.out_features) == (4096, 1000)


def test_mobilenet_has_distillers_layer_names_and_widths():
    modules = _modules("mobilenet_025", 1000)
    for k in range(1, 14):
        dw, pw = modules[f"model.{k}.0"], modules[f"model.{k}.3"]
        assert dw.groups == dw.in_channels and dw.kernel_size == (3, 3)
        assert pw.kernel_size == (1, 1)
    assert modules["model.0.0"].stride == (2, 2)
    assert "model.14" in modules and "model.15" not in modules
    assert [modules[f"model.{k}.3"].out_channels for k in (1, 2, 4, 6, 12)] == mobilenet_widths(0.25)[1:]
    assert modules["fc"].in_features == 256


def test_num_classes_and_in_channels_shape_the_first_and_last_layers():
    for arch, shape in (("preact_resnet20_cifar", (1, 28, 28)), ("mobilenet_025", (1, 64, 64))):
        model = create_model(arch, num_classes=7, in_channels=1).eval()
        with torch.no_grad():
            assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("arch", ["plain20_cifar", "preact_resnet20_cifar_conv_ds", "preact_resnet18",
                                  "alexnet_bn", "mobilenet"])
def test_distiller_architectures_have_no_pretrained_weights(arch):
    with pytest.raises(ConfigError, match="no pretrained weights"):
        create_model(arch, 10, 3, pretrained=True)


def test_torchvision_models_of_similar_names_stay_torchvisions():
    list_models()  # registers torchvision's classifiers
    for name in ("alexnet", "mobilenet_v2", "mobilenet_v3_small", "resnet18"):
        assert isinstance(MODELS.get(name), TorchvisionModel)
    for name in ("alexnet_bn", "mobilenet", "preact_resnet18"):
        assert not isinstance(MODELS.get(name), TorchvisionModel)


def test_list_models_names_each_distiller_architecture_once_in_order():
    names = list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert set(CIFAR_NAMES + IMAGENET_NAMES) <= set(names)
    assert list_models("mobilenet*") == ["mobilenet", "mobilenet_025", "mobilenet_050", "mobilenet_075",
                                         "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
    assert list_models("plain*") == ["plain20_cifar", "plain20_cifar_nobn"]
