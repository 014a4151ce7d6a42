"""Datasets by name: their description and their train / validation / test splits."""
from __future__ import annotations

from typing import Optional

from distill_ee.apputils.datasets.base import DatasetInfo, DataSplits, DatasetSource
from distill_ee.apputils.datasets.registry import DATASETS
from distill_ee.errors import ConfigError


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
    bad_images: str = "stop",
    image_check: str = "header",
) -> DataSplits:
    """Train / validation / test splits of ``name``; the stratified split depends only on ``split_seed``.

    ``valid_size`` is the share of the training part held out for validation (0: no validation split).
    Datasets of image files (imagefolder, imagenet) check every file first (``image_check``: header or decode)
    and stop at a bad one (``bad_images="stop"``, a DataError) or leave it out (``"skip"``).
    """
    source = dataset_source(name)
    options = {"valid_size": valid_size, "split_seed": split_seed, "image_size": image_size}
    if source.image_files:
        options.update(bad_images=bad_images, image_check=image_check)
    elif (bad_images, image_check) != ("stop", "header"):
        raise ConfigError(f"dataset {name!r} is not read from image files: bad_images and image_check apply to "
                          "imagefolder and imagenet")
    return source.load(data_dir, **options)
