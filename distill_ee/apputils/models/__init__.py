"""The model zoo: built-in MNIST, CIFAR and ImageNet architectures (Distiller's among them) and torchvision's
classifiers, by name."""
from distill_ee.apputils.models.factory import create_model, list_models
from distill_ee.apputils.models.torchvision_models import register_torchvision_models
from distill_ee.apputils.models import (  # noqa: F401  (registration)
    alexnet_batchnorm,
    lenet,
    mobilenet,
    msdnet,
    plain_cifar,
    preact_resnet_cifar,
    preact_resnet_imagenet,
    ranet,
    resnet_cifar,
    simplenet,
    vgg_cifar,
)

__all__ = ["create_model", "list_models", "register_torchvision_models"]
