"""Datasets of the sample application by name: description, train / validation / test splits, loaders.

Importing this package registers every dataset source in ``distill_ee.registry.DATASETS``.
"""
from distill_ee.apputils.datasets import cifar10, fashion_mnist, image_folder, mnist, mnist5k  # noqa: F401
from distill_ee.apputils.datasets.base import DatasetInfo, DataSplits, DatasetSource
from distill_ee.apputils.datasets.batch_loader import InMemoryLoader
from distill_ee.apputils.datasets.in_memory import InMemoryImages
from distill_ee.apputils.datasets.inputs import check_inputs, check_trained_on
from distill_ee.apputils.datasets.loaders import make_loader, make_loaders
from distill_ee.apputils.datasets.loading import dataset_info, dataset_source, load_dataset

__all__ = [
    "DatasetInfo",
    "DataSplits",
    "DatasetSource",
    "InMemoryImages",
    "InMemoryLoader",
    "check_inputs",
    "check_trained_on",
    "dataset_info",
    "dataset_source",
    "load_dataset",
    "make_loader",
    "make_loaders",
]
