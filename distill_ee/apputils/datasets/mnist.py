"""MNIST from a directory of the four idx files, in torchvision's layout (plain or gzipped)."""
from __future__ import annotations

import gzip
import os
import struct
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from distill_ee.apputils.datasets.base import DataSplits
from distill_ee.apputils.datasets.fixed_size import FixedSizeSource
from distill_ee.errors import DataError
from distill_ee.apputils.datasets.registry import DATASETS

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def expected_layout(data_dir: str) -> str:
    """The accepted layouts, spelled out with ``data_dir``."""
    root = data_dir.rstrip("/\\") or data_dir
    folders = " or ".join(os.path.join(root, *sub) + os.sep for sub in (("MNIST", "raw"), ("raw",), ()))
    return f"expected {folders} holding {', '.join(IDX_FILES.values())} (each may end in .gz)"


def find_idx_files(data_dir: str) -> Dict[str, str]:
    """Paths of the four idx files in the first folder of the accepted layouts that holds all of them."""
    if os.path.isdir(data_dir):
        for folder in (os.path.join(data_dir, "MNIST", "raw"), os.path.join(data_dir, "raw"), data_dir):
            found = {key: _existing(os.path.join(folder, name)) for key, name in IDX_FILES.items()}
            if all(found.values()):
                return found  # type: ignore[return-value]
    problem = "no such directory" if not os.path.isdir(data_dir) else "MNIST idx files not found"
    raise DataError(f"dataset 'mnist': {problem}: {data_dir}; {expected_layout(data_dir)}")


def _existing(path: str) -> Optional[str]:
    for candidate in (path, path + ".gz"):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_idx(path: str, magic: int) -> np.ndarray:
    """The uint8 array stored in an idx file whose magic number must be ``magic``."""
    ndim = magic & 0xFF
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"dataset 'mnist': cannot read {path}: {exc}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(f"dataset 'mnist': {path} is not an idx file with magic number {magic}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"dataset 'mnist': {path} declares shape {dims} but holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_pair(images_path: str, labels_path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of one images / labels file pair."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise DataError(f"dataset 'mnist': {images_path} holds {images.shape[1:]} images, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"dataset 'mnist': {len(images)} images in {images_path} but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"dataset 'mnist': {images_path} holds no images")
    if labels.size and labels.max() > 9:
        raise DataError(f"dataset 'mnist': {labels_path} holds label {labels.max()}, expected 0-9")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


@DATASETS.register("mnist")
class Mnist(FixedSizeSource):
    """The 70,000 MNIST digits: 60,000 train (validation carved out stratified) and 10,000 test."""

    name = "mnist"
    num_classes = 10
    input_shape = (1, 28, 28)
    layout = staticmethod(expected_layout)

    def read(self, data_dir: Optional[str], *, valid_size: float, split_seed: int) -> DataSplits:
        """Read the idx files under ``data_dir`` and hold out ``valid_size`` of train for validation."""
        paths = find_idx_files(data_dir)
        train = read_pair(paths["train_images"], paths["train_labels"])
        test = read_pair(paths["test_images"], paths["test_labels"])
        return self.held_out(train, test, valid_size=valid_size, split_seed=split_seed, mean=MNIST_MEAN,
                             std=MNIST_STD, classes=MNIST_CLASSES)
