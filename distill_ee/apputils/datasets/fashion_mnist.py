"""Fashion-MNIST (Zalando): 70,000 28x28 grayscale images of clothing in 10 classes, in MNIST's idx format.

A drop-in for MNIST's format and much harder. Read from DATASET_DIR (torchvision's ``FashionMNIST/raw`` layout,
``raw/`` or the folder itself, plain or gzipped) or, without one, from where Debian's ``dataset-fashion-mnist``
package installs it.
"""
from __future__ import annotations

from distill_ee.apputils.datasets.idx_files import IdxSource
from distill_ee.apputils.datasets.registry import DATASETS

#: where ``apt-get install dataset-fashion-mnist`` puts the four files
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
#: the training images' mean and standard deviation (of pixels scaled to [0, 1])
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


@DATASETS.register("fashion_mnist")
class FashionMnist(IdxSource):
    """The 70,000 Fashion-MNIST images: 60,000 train (validation carved out stratified) and 10,000 test."""

    name = "fashion_mnist"
    classes = FASHION_MNIST_CLASSES
    mean = FASHION_MNIST_MEAN
    std = FASHION_MNIST_STD
    folder = "FashionMNIST"
    default_dir = DEBIAN_DIR
    install = "install it with `apt-get install dataset-fashion-mnist`, or give DATASET_DIR"
