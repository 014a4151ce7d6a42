"""Each process's share of the data: together the processes' minibatches are a single process's minibatches of
the global batch size, in the same order, and the validation shares cover each batch once."""
import pytest
import torch
from torch import nn

from distill_ee.apputils.datasets import load_dataset, make_loaders
from distill_ee.apputils.datasets.sharding import BatchShard, shard_loaders
from distill_ee.apputils.train import evaluate
from distill_ee.errors import ConfigError


@pytest.fixture(scope="module")
def splits():
    return load_dataset("mnist5k")


@pytest.mark.parametrize("size,batch,world", [(10, 3, 2), (9, 3, 3), (4, 8, 2), (100, 7, 4)])
def test_batch_shards_deal_out_whole_batches_covering_every_sample_once(size, batch, world):
    shards = [list(BatchShard(size, batch, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))
    assert [len(BatchShard(size, batch, r, world)) for r in range(world)] == [len(s) for s in shards]
    for rank, shard in enumerate(shards):  # batch b of the whole goes to rank b % world, intact
        starts = [i for i in shard if i % batch == 0]
        assert all(start // batch % world == rank for start in starts)


def test_the_processes_steps_together_are_the_single_process_steps(splits):
    single, _, _ = make_loaders(splits, batch_size=64, seed=5)
    shares = [shard_loaders(splits, 64, 0, seed=5, rank=r, world_size=2)[0] for r in range(2)]
    for epoch in (0, 3):
        single.generator.manual_seed(5 * 1000003 + epoch)  # what the app does at each epoch
        for share in shares:
            share.sampler.set_epoch(epoch)
        whole = [y for _, y in single]
        parts = [[y for _, y in share] for share in shares]
        assert len(parts[0]) == len(parts[1]) == len(whole) == len(single)
        for step, targets in enumerate(whole[:-1]):  # the last batch is padded to equal shares
            together = torch.stack([parts[0][step], parts[1][step]], dim=1).reshape(-1)
            assert torch.equal(together, targets)


def test_a_global_batch_the_processes_cannot_share_equally_is_refused(splits):
    with pytest.raises(ConfigError, match="--batch-size 63 is the global batch, split among 2 processes"):
        shard_loaders(splits, 63, 0, seed=0, rank=0, world_size=2)


def test_validation_shares_summed_equal_one_evaluation(splits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    _, valid, _ = make_loaders(splits, batch_size=96)
    whole = evaluate(model, valid, nn.CrossEntropyLoss(), torch.device("cpu"))
    sums = [0.0, 0.0, 0.0]
    for rank in range(3):
        _, share = shard_loaders(splits, 96, 0, seed=0, rank=rank, world_size=3)
        part = evaluate(model, share, nn.CrossEntropyLoss(), torch.device("cpu"))
        n = len(share.sampler)
        sums = [s + v for s, v in zip(sums, (part["loss"] * n, part["top1"] * n, n))]
    assert sums[2] == len(splits.valid)
    assert sums[1] / sums[2] == pytest.approx(whole["top1"], abs=1e-9)
    assert sums[0] / sums[2] == pytest.approx(whole["loss"], rel=1e-6)
