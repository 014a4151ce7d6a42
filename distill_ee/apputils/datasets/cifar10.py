"""CIFAR-10 from a directory in the standard python-pickle layout (cifar-10-batches-py)."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from distill_ee.apputils.datasets.base import DataSplits
from distill_ee.apputils.datasets.fixed_size import FixedSizeSource
from distill_ee.apputils.datasets.safe_pickle import load_restricted
from distill_ee.errors import DataError
from distill_ee.apputils.datasets.registry import DATASETS

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
PIXELS = 3 * 32 * 32


def expected_layout(data_dir: str) -> str:
    """The accepted layout, spelled out with ``data_dir``."""
    folder = os.path.join(data_dir, FOLDER)
    return (
        f"expected {folder}{os.sep} (or {data_dir} being that folder) holding "
        f"{', '.join(TRAIN_BATCHES)}, {TEST_BATCH} and {META} (the CIFAR-10 python version)"
    )


def find_batches_dir(data_dir: str) -> str:
    """The folder holding the CIFAR-10 batch files: ``data_dir/cifar-10-batches-py`` or ``data_dir``."""
    for folder in (os.path.join(data_dir, FOLDER), data_dir):
        if all(os.path.isfile(os.path.join(folder, n)) for n in (*TRAIN_BATCHES, TEST_BATCH, META)):
            return folder
    problem = "no such directory" if not os.path.isdir(data_dir) else "CIFAR-10 batch files not found"
    raise DataError(f"dataset 'cifar10': {problem}: {data_dir}; {expected_layout(data_dir)}")


def read_pickle(path: str) -> Dict[str, Any]:
    """A CIFAR pickle's dictionary with its keys as str (the files have Python 2 byte-string keys)."""
    try:
        with open(path, "rb") as f:
            entry = load_restricted(f.read())
    except Exception as exc:  # a corrupt pickle can fail with almost any exception type
        raise DataError(f"dataset 'cifar10': {path} is not a CIFAR-10 python pickle: {exc}") from None
    if not isinstance(entry, dict):
        raise DataError(f"dataset 'cifar10': {path} holds a {type(entry).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_batch(path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file."""
    entry = read_pickle(path)
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"dataset 'cifar10': {path} lacks the 'data' and 'labels' entries")
    data = np.asarray(entry["data"])
    try:
        raw_labels = np.asarray(entry["labels"])
        if raw_labels.dtype.kind not in "iu":
            raise ValueError(f"labels of type {raw_labels.dtype}")
        labels = raw_labels.astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"dataset 'cifar10': {path}: 'labels' must be whole numbers 0-9 ({exc})") from None
    if data.dtype.kind not in "iuf" or (data.dtype.kind == "f" and not np.isfinite(data).all()):
        raise DataError(f"dataset 'cifar10': {path}: 'data' must be pixel values 0-255, got "
                        f"{'non-finite values' if data.dtype.kind == 'f' else f'values of type {data.dtype}'}")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"dataset 'cifar10': {path}: 'data' holds values outside 0-255")
    if data.ndim != 2 or data.shape[1] != PIXELS or len(data) != len(labels):
        raise DataError(
            f"dataset 'cifar10': {path}: 'data' must be N x {PIXELS} with N labels, "
            f"got {data.shape} and {len(labels)} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"dataset 'cifar10': {path} holds labels outside 0-9")
    images = torch.from_numpy(data.astype(np.uint8).reshape(-1, 3, 32, 32))
    return images, torch.from_numpy(labels)


def read_label_names(path: str) -> List[str]:
    """The ten class names stored in ``batches.meta``."""
    names = read_pickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"dataset 'cifar10': {path} must hold 'label_names', a list of 10 names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def train_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """Random 32x32 crop of the image padded by 4, then a random horizontal flip."""
    from torchvision import transforms  # importing torchvision takes seconds; only CIFAR-10 needs it

    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])


@DATASETS.register("cifar10")
class Cifar10(FixedSizeSource):
    """CIFAR-10: 50,000 train (validation carved out stratified, train augmented) and 10,000 test images."""

    name = "cifar10"
    num_classes = 10
    input_shape = (3, 32, 32)
    layout = staticmethod(expected_layout)

    def read(self, data_dir: Optional[str], *, valid_size: float, split_seed: int) -> DataSplits:
        """Read the batch files and hold out ``valid_size`` of train (not augmented) for validation."""
        folder = find_batches_dir(data_dir)
        classes = read_label_names(os.path.join(folder, META))
        parts = [read_batch(os.path.join(folder, name)) for name in TRAIN_BATCHES]
        train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        test = read_batch(os.path.join(folder, TEST_BATCH))
        return self.held_out(train, test, valid_size=valid_size, split_seed=split_seed,
                             augment=train_augmentation(), mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=classes)
