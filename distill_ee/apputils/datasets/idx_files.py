"""Datasets of 28x28 grayscale images in four idx files (MNIST's format), in torchvision's layout, plain or
gzipped: finding, reading and checking the files."""
from __future__ import annotations

import gzip
import os
import struct
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from distill_ee.apputils.datasets.base import DataSplits
from distill_ee.apputils.datasets.fixed_size import FixedSizeSource
from distill_ee.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: the largest idx file read (ImageNet-sized idx files do not exist: a larger one is not a dataset of this kind)
MAX_IDX_BYTES = 1 << 30


class IdxSource(FixedSizeSource):
    """A dataset of ``classes`` held in the four idx files: 28x28 grayscale images, train and test.

    ``folder`` is torchvision's name for its directory (``DIR/<folder>/raw``); ``default_dir`` is where a system
    package installs it (used when no DATASET_DIR is given) and ``install`` says how to get that package.
    """

    num_classes = 10
    input_shape = (1, 28, 28)
    classes: Tuple[str, ...] = ()
    mean: Tuple[float, ...] = ()
    std: Tuple[float, ...] = ()
    folder: str = ""
    default_dir: Optional[str] = None
    install: str = ""

    def layout(self, data_dir: str) -> str:
        """The accepted layouts, spelled out with ``data_dir``."""
        root = data_dir.rstrip("/\\") or data_dir
        folders = " or ".join(os.path.join(root, *sub) + os.sep for sub in self.subfolders())
        return f"expected {folders} holding {', '.join(IDX_FILES.values())} (each may end in .gz)"

    def subfolders(self) -> Sequence[Tuple[str, ...]]:
        """Where under a DATASET_DIR the files may lie, first match wins: torchvision's layout, raw/, itself."""
        return ((self.folder, "raw"), ("raw",), ())

    def needs_directory(self) -> bool:
        """A DATASET_DIR is needed unless the dataset has a default location."""
        return self.default_dir is None

    def read(self, data_dir: Optional[str], *, valid_size: float, split_seed: int) -> DataSplits:
        """Read the idx files under ``data_dir`` (or the default location) and hold out ``valid_size`` of train
        for validation."""
        paths = self.find(data_dir)
        train = self.read_pair(paths["train_images"], paths["train_labels"])
        test = self.read_pair(paths["test_images"], paths["test_labels"])
        return self.held_out(train, test, valid_size=valid_size, split_seed=split_seed, mean=self.mean,
                             std=self.std, classes=self.classes)

    def find(self, data_dir: Optional[str]) -> Dict[str, str]:
        """Paths of the four idx files in the first folder of the accepted layouts that holds all of them."""
        if data_dir is None:
            if self.default_dir is None or not os.path.isdir(self.default_dir):
                raise DataError(f"dataset {self.name!r}: not found at {self.default_dir} ({self.install}), and no "
                                f"DATASET_DIR was given; {self.layout('DATASET_DIR')}")
            data_dir = self.default_dir
        if os.path.isdir(data_dir):
            for sub in self.subfolders():
                folder = os.path.join(data_dir, *sub)
                found = {key: _existing(os.path.join(folder, name)) for key, name in IDX_FILES.items()}
                if all(found.values()):
                    return found  # type: ignore[return-value]
        problem = "no such directory" if not os.path.isdir(data_dir) else "idx files not found"
        raise DataError(f"dataset {self.name!r}: {problem}: {data_dir}; {self.layout(data_dir)}")

    def read_idx(self, path: str, magic: int) -> np.ndarray:
        """The uint8 array stored in an idx file whose magic number must be ``magic``."""
        raw = self._read_bytes(path)
        ndim = magic & 0xFF
        header = 4 + 4 * ndim
        if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
            raise DataError(f"dataset {self.name!r}: {path} is not an idx file with magic number {magic}")
        dims = struct.unpack(f">{ndim}I", raw[4:header])
        if len(raw) - header != int(np.prod(dims, dtype=np.int64)):
            raise DataError(f"dataset {self.name!r}: {path} declares shape {dims} but holds {len(raw) - header} "
                            "bytes")
        return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()

    def _read_bytes(self, path: str) -> bytes:
        """The file's bytes (decompressed when it ends in .gz), at most MAX_IDX_BYTES."""
        try:
            with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
                raw = f.read(MAX_IDX_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise DataError(f"dataset {self.name!r}: cannot read {path}: {exc}") from None
        if len(raw) > MAX_IDX_BYTES:
            raise DataError(f"dataset {self.name!r}: {path} holds more than {MAX_IDX_BYTES >> 20} MiB: not an idx "
                            "file of 28x28 images")
        return raw

    def read_pair(self, images_path: str, labels_path: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of one images / labels file pair."""
        images = self.read_idx(images_path, IMAGES_MAGIC)
        labels = self.read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
        if images.shape[1:] != self.input_shape[1:]:
            raise DataError(f"dataset {self.name!r}: {images_path} holds {images.shape[1:]} images, expected 28x28")
        if len(images) != len(labels):
            raise DataError(f"dataset {self.name!r}: {len(images)} images in {images_path} but {len(labels)} "
                            "labels")
        if len(images) == 0:
            raise DataError(f"dataset {self.name!r}: {images_path} holds no images")
        if labels.size and labels.max() >= self.num_classes:
            raise DataError(f"dataset {self.name!r}: {labels_path} holds label {labels.max()}, expected 0-"
                            f"{self.num_classes - 1}")
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


def _existing(path: str) -> Optional[str]:
    for candidate in (path, path + ".gz"):
        if os.path.isfile(candidate):
            return candidate
    return None
