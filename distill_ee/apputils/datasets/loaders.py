"""Batch loaders over the splits: a shuffled, seeded train loader and ordered validation / test loaders."""
from __future__ import annotations

import logging
import random
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from distill_ee.apputils.datasets.base import DataSplits
from distill_ee.apputils.datasets.batch_loader import InMemoryLoader
from distill_ee.errors import ConfigError

Loader = Union[DataLoader, InMemoryLoader]
EVAL_ORDER_SEED = 0
log = logging.getLogger(__name__)


def make_loaders(
    splits: DataSplits,
    batch_size: int,
    workers: int = 0,
    *,
    seed: Optional[int] = None,
    deterministic: bool = False,
) -> Tuple[Loader, Optional[Loader], Loader]:
    """Train (shuffled), validation and test loaders yielding ``(inputs, targets)`` batches.

    ``seed`` fixes the train order (a torch.Generator of its own; without it the global RNG is used);
    ``deterministic`` also seeds Python and numpy in worker processes and implies seed 0 when none is given.
    Validation and test are not shuffled and never draw from the global RNG. A last training batch of a
    single sample is left out (a different sample each epoch, the order being shuffled): batch norm cannot
    train on one sample, and one sample's gradient step is mostly noise.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"the number of data-loading workers must be >= 0, got {workers}")
    if deterministic and seed is None:
        seed = 0
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def loader(dataset: Dataset, shuffle: bool, gen: Optional[torch.Generator], drop_last: bool = False) -> Loader:
        return make_loader(dataset, batch_size, workers, shuffle=shuffle, generator=gen, deterministic=deterministic,
                           drop_last=drop_last)

    def eval_loader(dataset: Dataset) -> Loader:
        return loader(dataset, False, torch.Generator().manual_seed(EVAL_ORDER_SEED))

    valid = eval_loader(splits.valid) if splits.valid is not None else None
    single_last = len(splits.train) > batch_size and len(splits.train) % batch_size == 1
    if single_last:
        log.info("The last training batch would hold one sample (%d images, batches of %d): it is left out each "
                 "epoch", len(splits.train), batch_size)
    return loader(splits.train, True, generator, single_last), valid, eval_loader(splits.test)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int = 0,
    *,
    shuffle: bool = False,
    generator: Optional[torch.Generator] = None,
    deterministic: bool = False,
    sampler: Optional[Sampler] = None,
    drop_last: bool = False,
) -> Loader:
    """An :class:`InMemoryLoader` for in-memory images without augmentation, else a DataLoader; a ``sampler``
    replaces ``shuffle``; ``drop_last`` leaves out an incomplete last batch."""
    if getattr(dataset, "supports_batches", False):
        return InMemoryLoader(dataset, batch_size, shuffle=shuffle, generator=generator, sampler=sampler,
                              drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        worker_init_fn=seed_worker if deterministic else None,
        persistent_workers=workers > 0,
        drop_last=drop_last,
    )


def seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a loader worker from the seed torch gave that worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
