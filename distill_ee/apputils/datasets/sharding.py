"""Each process's share of the data under torch.distributed (torchrun).

Training goes through a DistributedSampler: each epoch's order is the one a single process would use with the
same seed (``set_epoch`` derives it from seed and epoch), padded to a multiple of the process count and dealt
out in turn, so that the processes' minibatches together are the single process's minibatches of the global
batch size. Validation deals out whole batches in turn, so that metrics summed over the processes equal a
single process's evaluation.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

from torch.utils.data import DistributedSampler, Sampler

from distill_ee.apputils.datasets.base import DataSplits
from distill_ee.apputils.datasets.loaders import Loader, make_loader
from distill_ee.errors import ConfigError

#: a single process's epoch order is seeded with ``seed * ORDER_STRIDE + epoch``
ORDER_STRIDE = 1000003


class BatchShard(Sampler):
    """The indices of every ``world_size``-th batch of ``batch_size`` consecutive samples, from batch ``rank``."""

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int):
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size

    def _batches(self) -> range:
        return range(self.rank, -(-self.size // self.batch_size), self.world_size)

    def __iter__(self) -> Iterator[int]:
        for b in self._batches():
            yield from range(b * self.batch_size, min((b + 1) * self.batch_size, self.size))

    def __len__(self) -> int:
        return sum(min((b + 1) * self.batch_size, self.size) - b * self.batch_size for b in self._batches())


def shard_loaders(splits: DataSplits, batch_size: int, workers: int, *, seed: int, rank: int, world_size: int,
                  deterministic: bool = False) -> Tuple[Loader, Optional[Loader]]:
    """This process's train loader (``batch_size / world_size`` per step; call ``sampler.set_epoch``) and its
    share of the validation batches (``batch_size`` each)."""
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch, split among {world_size} processes: "
                          f"give a multiple of {world_size}")
    sampler = DistributedSampler(splits.train, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed * ORDER_STRIDE, drop_last=False)
    train = make_loader(splits.train, batch_size // world_size, workers, sampler=sampler,
                        deterministic=deterministic)
    valid = None
    if splits.valid is not None:
        shard = BatchShard(len(splits.valid), batch_size, rank, world_size)
        valid = make_loader(splits.valid, batch_size, workers, sampler=shard, deterministic=deterministic)
    return train, valid
