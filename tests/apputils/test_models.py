"""The model zoo: built-in MNIST/CIFAR architectures and torchvision classifiers, built by name."""
import os

import pytest
import torch
import torch.fx

from distill_ee.apputils.models import create_model, list_models
from distill_ee.errors import ConfigError
from distill_ee.apputils.models.registry import MODELS
from distill_ee.registry import UnknownNameError

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)

ZOO = [
    ("lenet_mnist", MNIST, ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]),
    ("simplenet_mnist", MNIST, ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"]),
    ("simplenet_v2_mnist", MNIST, ["conv1", "conv2", "avgpool", "fc"]),
    ("resnet20_cifar", CIFAR, ["conv1", "bn1", "relu", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu1",
                               "layer1.0.conv2", "layer1.0.bn2", "layer2.0.downsample.0", "layer2.0.downsample.1",
                               "layer3.2.conv2", "avgpool", "fc"]),
    ("resnet32_cifar", CIFAR, ["layer1.4.conv2", "layer3.4.bn2"]),
    ("resnet44_cifar", CIFAR, ["layer2.6.conv1"]),
    ("resnet56_cifar", CIFAR, ["layer3.8.conv2"]),
    ("resnet110_cifar", CIFAR, ["layer1.17.conv2", "layer3.17.bn2"]),
    ("vgg16_cifar", CIFAR, ["features.0", "features.1", "features.28", "classifier"]),
    ("msdnet_mnist", MNIST, ["blocks.0.coarsest", "blocks.5.coarsest", "classifier.linear"]),
    ("msdnet_cifar", CIFAR, ["blocks.0.layers.0", "blocks.6.coarsest", "classifier.linear"]),
    ("msdnet_cifar_batch", CIFAR, ["blocks.4.coarsest"]),
    ("ranet_mnist", MNIST, ["subnets.0.stem", "subnets.1.blocks.0.fuse", "subnets.1.blocks.1.out", "classifier"]),
]


@pytest.mark.parametrize("arch,shape,names", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_model_builds_traces_and_keeps_its_module_names(arch, shape, names):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=shape[0]).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        y = model(x)
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(x), y)
    assert y.shape == (2, 10)
    modules = dict(model.named_modules())
    assert all(name in modules for name in names)


def test_lenet_parameters_can_be_named_like_a_schedule_does():
    params = dict(create_model("lenet_mnist", 10, 1).named_parameters())
    assert params["conv1.weight"].shape == (20, 1, 5, 5)
    assert params["conv2.weight"].shape == (50, 20, 5, 5)
    assert params["fc1.weight"].shape == (500, 800)
    assert params["fc2.weight"].shape == (10, 500)


def test_resnet20_cifar_has_distillers_parameter_count():
    model = create_model("resnet20_cifar", 10, 3)
    assert sum(p.numel() for p in model.parameters()) == 272_474  # ~0.27M as in the paper


def test_resnet_blocks_downsample_only_where_the_shape_changes():
    modules = dict(create_model("resnet20_cifar", 10, 3).named_modules())
    assert modules["layer1.0"].downsample is None
    assert modules["layer2.0"].downsample[0].stride == (2, 2)
    assert modules["layer2.1"].downsample is None


def test_num_classes_and_in_channels_shape_the_first_and_last_layers():
    model = create_model("resnet20_cifar", num_classes=100, in_channels=1)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 100)


def test_cifar_resnet_takes_mnist_digits_as_they_are():
    # schedules/resnet20_mnist.earlyexit.yaml trains resnet20_cifar on 1x28x28 mnist5k: no separate arch.
    model = create_model("resnet20_cifar", num_classes=10, in_channels=1).eval()
    shapes = {}
    for name in ("layer1.0", "layer1.2", "layer2.2", "layer3.2"):
        dict(model.named_modules())[name].register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        assert model(torch.randn(2, *MNIST)).shape == (2, 10)
    assert shapes == {"layer1.0": (16, 28, 28), "layer1.2": (16, 28, 28), "layer2.2": (32, 14, 14),
                      "layer3.2": (64, 7, 7)}


def test_zoo_models_have_no_pretrained_weights():
    with pytest.raises(ConfigError, match="no pretrained weights"):
        create_model("lenet_mnist", 10, 1, pretrained=True)


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet20_cifr", 10, 3)
    assert "resnet20_cifar" in info.value.suggestions
    assert "did you mean 'resnet20_cifar'" in str(info.value)


def test_bad_class_or_channel_counts_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("lenet_mnist", 0, 1)
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("lenet_mnist", 10, 0)


def test_list_models_filters_by_pattern_and_includes_torchvision():
    assert list_models("resnet*_cifar") == [
        "resnet110_cifar", "resnet20_cifar", "resnet32_cifar", "resnet44_cifar", "resnet56_cifar",
    ]
    assert "resnet18" in list_models() and "resnet18" in MODELS


def test_torchvision_model_adapts_to_classes_and_grey_images():
    model = create_model("resnet18", num_classes=10, in_channels=1).eval()
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def _weights_file(name):
    from torchvision.models import get_model_weights

    return os.path.basename(get_model_weights(name).DEFAULT.url)


def test_pretrained_torchvision_weights_missing_from_disk_are_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match="not on disk"):
        create_model("resnet18", 10, 3, pretrained=True)


def test_pretrained_torchvision_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(1)
    saved = resnet18(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(saved, tmp_path / "checkpoints" / _weights_file("resnet18"))

    model = create_model("resnet18", num_classes=10, in_channels=1, pretrained=True)

    assert torch.equal(model.layer1[0].conv1.weight, saved["layer1.0.conv1.weight"])
    assert torch.allclose(model.conv1.weight, saved["conv1.weight"].sum(dim=1, keepdim=True))
    assert model.fc.out_features == 10 and model.fc.in_features == 512
