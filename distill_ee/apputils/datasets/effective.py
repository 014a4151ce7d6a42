"""Distiller's effective split sizes: the portion of each split a run uses (``--etrs``, ``--evs``, ``--etes``).

The training portion is drawn anew each epoch, as Distiller's SwitchingSubsetRandomSampler draws it: the first
samples of the epoch's shuffled order, so a seeded run draws the same portions again. The validation and test
portions are fixed subsets chosen once by the seed, kept in the split's order."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from distill_ee.apputils.datasets.base import DataSplits
from distill_ee.apputils.datasets.in_memory import InMemoryImages
from distill_ee.errors import ConfigError

#: offset of the validation subset's seed from the test subset's, so the two draw independently
VALID_SEED_OFFSET = 1


def portion_count(size: int, portion: float) -> int:
    """Samples kept of ``size``: ``floor(size * portion)``, as Distiller counts them."""
    return int(math.floor(size * portion + 1e-9))


def check_portion(flag: str, portion: float, size: int, what: str) -> int:
    """The kept count, or a ConfigError when ``portion`` of ``size`` keeps no sample."""
    count = portion_count(size, portion)
    if count < 1:
        raise ConfigError(f"{flag} {portion:g} keeps no sample of the {size:,} {what} (floor({size} x {portion:g}) "
                          f"= 0); give at least {1 / max(size, 1):.2g}")
    return count


class ClassedSubset(Subset):
    """A Subset that keeps the class names of the dataset it selects from."""

    @property
    def classes(self) -> Optional[Sequence[str]]:
        """The class names of the whole dataset."""
        return getattr(self.dataset, "classes", None)


def subset(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The samples of ``dataset`` at ``indices``: an InMemoryImages stays one (batched loading), others are a
    Subset that keeps their class names."""
    if isinstance(dataset, InMemoryImages):
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        part = copy.copy(dataset)
        part.images, part.targets = dataset.images[index], dataset.targets[index]
        return part
    return ClassedSubset(dataset, [int(i) for i in indices])


def fixed_portion(dataset: Dataset, portion: float, seed: int, flag: str, what: str) -> Dataset:
    """A fixed subset of ``portion`` of ``dataset``, chosen by ``seed``, in the dataset's order."""
    if portion >= 1.0:
        return dataset
    count = check_portion(flag, portion, len(dataset), what)
    chosen = np.random.default_rng(seed).permutation(len(dataset))[:count]
    return subset(dataset, np.sort(chosen))


def effective_splits(splits: DataSplits, valid_portion: float, test_portion: float, seed: int) -> DataSplits:
    """``splits`` with the validation and test splits cut to their portions (fixed by ``seed``)."""
    valid = splits.valid
    if valid is not None:
        valid = fixed_portion(valid, valid_portion, seed + VALID_SEED_OFFSET, "--effective-valid-size/--evs",
                              "validation images")
    test = fixed_portion(splits.test, test_portion, seed, "--effective-test-size/--etes", "test images")
    return replace(splits, valid=valid, test=test)


def loader_samples(loader: Any) -> int:
    """Samples one pass of ``loader`` yields (its portion, else its sampler's share, else its whole dataset)."""
    if isinstance(loader, PortionLoader):
        return loader.count
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "__len__"):
        return len(sampler)
    return len(loader.dataset)


class PortionLoader:
    """The first ``count`` samples of each pass of a shuffled loader: a new random portion each epoch, drawn
    from the loader's own (seeded) order; other attributes are the loader's."""

    def __init__(self, loader: Any, count: int):
        self.loader = loader
        self.count = count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)

    def __len__(self) -> int:
        return -(-self.count // self.loader.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        left = self.count
        for inputs, target in self.loader:
            if left <= 0:
                break
            if len(target) > left:
                inputs, target = inputs[:left], target[:left]
            left -= len(target)
            yield inputs, target


def train_portion(loader: Any, portion: float) -> Any:
    """``loader`` cut to ``portion`` of its samples per pass (itself when the portion is 1)."""
    if portion >= 1.0:
        return loader
    size = loader_samples(loader)
    return PortionLoader(loader, check_portion("--effective-train-size/--etrs", portion, size, "training images"))
