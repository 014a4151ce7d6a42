"""Datasets by name: their description and their train / validation / test splits."""
from __future__ import annotations

from typing import Optional

from distill_ee.apputils.datasets.base import DatasetInfo, DataSplits, DatasetSource
from distill_ee.apputils.datasets.registry import DATASETS


def dataset_source(name: str) -> DatasetSource:
    """The registered source of dataset ``name``; raises UnknownNameError with close names."""
    return DATASETS.get(name)()


def dataset_info(name: str, data_dir: Optional[str] = None, *, image_size: Optional[int] = None) -> DatasetInfo:
    """Number of classes and input shape of dataset ``name`` without loading its images."""
    return dataset_source(name).info(data_dir, image_size)


def load_dataset(
    name: str,
    data_dir: Optional[str] = None,
    *,
    valid_size: float = 0.1,
    split_seed: int = 0,
    image_size: Optional[int] = None,
) -> DataSplits:
    """Train / validation / test splits of ``name``; the stratified split depends only on ``split_seed``.

    ``valid_size`` is the share of the training part held out for validation (0: no validation split).
    """
    source = dataset_source(name)
    return source.load(data_dir, valid_size=valid_size, split_seed=split_seed, image_size=image_size)
