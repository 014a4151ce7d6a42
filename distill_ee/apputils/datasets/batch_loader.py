"""A DataLoader stand-in that batches in-memory images by tensor indexing instead of per-sample calls."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

from torch.utils.data import Sampler

import torch
from torch import Tensor

from distill_ee.apputils.datasets.in_memory import InMemoryImages


class InMemoryLoader:
    """Iterates ``(inputs, targets)`` batches of an :class:`InMemoryImages` like a single-process DataLoader.

    With ``shuffle`` each pass draws a new order from ``generator`` (the global RNG when None), as
    DataLoader's RandomSampler does, so a seeded generator gives the same epoch orders on every run. A
    ``sampler`` (a DistributedSampler, say) gives the sample order instead, batched in the order it yields.
    ``drop_last`` leaves out the last batch when it is not full, as DataLoader's does.
    """

    num_workers = 0

    def __init__(
        self,
        dataset: InMemoryImages,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
        sampler: Optional[Sampler] = None,
        drop_last: bool = False,
    ):
        self.dataset = dataset
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.sampler = sampler

    def __len__(self) -> int:
        size = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        if self.sampler is not None:
            order: Optional[Tensor] = torch.as_tensor(list(self.sampler), dtype=torch.long)
            size = len(order)
        else:
            size = len(self.dataset)
            order = torch.randperm(size, generator=self.generator) if self.shuffle else None
        if self.drop_last:
            size -= size % self.batch_size
        for start in range(0, size, self.batch_size):
            stop = start + self.batch_size
            yield self.dataset.batch(order[start:stop] if order is not None else slice(start, stop))
