"""MNIST from a directory of the four idx files, in torchvision's layout (plain or gzipped)."""
from __future__ import annotations

from distill_ee.apputils.datasets.idx_files import IdxSource
from distill_ee.apputils.datasets.registry import DATASETS

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))


@DATASETS.register("mnist")
class Mnist(IdxSource):
    """The 70,000 MNIST digits: 60,000 train (validation carved out stratified) and 10,000 test."""

    name = "mnist"
    classes = MNIST_CLASSES
    mean = MNIST_MEAN
    std = MNIST_STD
    folder = "MNIST"
