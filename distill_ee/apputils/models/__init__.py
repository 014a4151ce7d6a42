"""The model zoo: built-in MNIST/CIFAR architectures and torchvision's classifiers, by name."""
from distill_ee.apputils.models.factory import create_model, list_models
from distill_ee.apputils.models.torchvision_models import register_torchvision_models
from distill_ee.apputils.models import lenet, msdnet, ranet, resnet_cifar, simplenet, vgg_cifar  # noqa: F401  (registration)

__all__ = ["create_model", "list_models", "register_torchvision_models"]
