"""Registry: names and aliases to classes, with did-you-mean for unknown names."""
import pytest

from distill_ee.registry import LR_SCHEDULERS, Registry, UnknownNameError


def test_decorator_registers_under_class_name_and_aliases():
    reg = Registry("widget")

    @reg.register(aliases=("OldWidget",))
    class Widget:
        pass

    assert reg.get("Widget") is Widget
    assert reg.get("OldWidget") is Widget
    assert reg.canonical("OldWidget") == "Widget"
    assert reg.names() == ["Widget"]
    assert "OldWidget" in reg


def test_unknown_name_lists_close_names_and_valid_ones():
    reg = Registry("pruner")
    reg.add("AutomatedGradualPruner", object)
    reg.add("SplicingPruner", object)
    with pytest.raises(UnknownNameError) as info:
        reg.get("AutomatedGradualPrunr")
    assert info.value.suggestions == ["AutomatedGradualPruner"]
    assert "did you mean 'AutomatedGradualPruner'" in str(info.value)
    assert "valid: AutomatedGradualPruner, SplicingPruner" in str(info.value)


def test_a_name_cannot_be_registered_twice():
    reg = Registry("thing")
    reg.add("A", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("A", 2)


def test_names_filter_with_shell_patterns():
    reg = Registry("arch")
    for name in ("resnet20_cifar", "resnet32_cifar", "vgg16_cifar"):
        reg.add(name, name)
    assert reg.names("resnet*") == ["resnet20_cifar", "resnet32_cifar"]


def test_lr_schedulers_come_from_torch_by_name_plus_distillers_two():
    import distill_ee.lr_schedulers  # noqa: F401  (registers them)

    for name in ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "ReduceLROnPlateau",
                 "PolynomialLR", "MultiStepMultiGammaLR"):
        assert name in LR_SCHEDULERS
