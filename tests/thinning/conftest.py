"""Shared fixtures of the thinning tests: a ResNet-20 whose block-entry convs lost half their filters."""
import logging
from types import SimpleNamespace
from typing import Callable, Dict, List

import pytest
import torch
from torch import nn

from distill_ee.apputils.models import create_model
from distill_ee.pruning import L1RankedStructureParameterPruner
from distill_ee.scheduler import CompressionScheduler
from support import randomize_batch_norms

BLOCK_CONV1 = [f"layer{s}.{b}.conv1.weight" for s in (1, 2, 3) for b in range(3)]


def silence_zero_channels(model: nn.Module, conv_names: List[str]) -> None:
    """Zero the batch-norm shift and mean of the channels whose filter is zero.

    That is what training with the filter masked from the start leaves: the channel's batch mean is 0, and its
    shift gets no gradient through the ReLU at exactly 0. It makes the dense model's removed channels exactly
    zero, so that thinning must reproduce its outputs exactly.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for conv_weight in conv_names:
            conv = conv_weight[: -len(".weight")]
            bn = modules[conv.replace("conv", "bn")]
            zero = modules[conv].weight.reshape(bn.num_features, -1).abs().sum(dim=1) == 0
            bn.bias[zero] = 0.0
            bn.running_mean[zero] = 0.0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def thinning_log():
    """What the thinning modules log, captured on their own logger (an app run may stop propagation above it)."""
    logger = logging.getLogger("distill_ee.thinning")
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(records)
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batches gain nothing from a second thread, and on a busy machine its spinning costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pruned_resnet() -> Callable[..., Dict[str, object]]:
    """Factory: resnet20_cifar with 50% of the filters of every layerX.Y.conv1 masked by L1 rank."""

    def make(fraction: float = 0.5, weights: List[str] = BLOCK_CONV1) -> Dict[str, object]:
        torch.manual_seed(0)
        model = create_model("resnet20_cifar", 10, 3)
        randomize_batch_norms(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scheduler = CompressionScheduler(model, optimizer)
        pruner = L1RankedStructureParameterPruner("filters", "Filters", fraction, weights)
        params = dict(model.named_parameters())
        for name in weights:
            pruner.set_param_mask(params[name], name, scheduler.masks, {"model": model})
        scheduler.apply_mask()
        silence_zero_channels(model, weights)
        return {"model": model, "optimizer": optimizer, "scheduler": scheduler}

    return make


@pytest.fixture
def images() -> torch.Tensor:
    """A fixed batch of four small images (the CIFAR ResNets pool adaptively, so 16x16 works)."""
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: CompressionScheduler,
               x: torch.Tensor) -> float:
    """One SGD step through the scheduler's masking hooks; returns the loss."""
    model.train()
    target = torch.arange(x.size(0)) % 10
    scheduler.on_minibatch_begin(0, 0, 1)
    loss = nn.functional.cross_entropy(model(x), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.on_minibatch_end(0, 0, 1)
    return loss.item()


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, for tests to call (conftest modules are not importable)."""
    return SimpleNamespace(block_conv1=BLOCK_CONV1, randomize_batch_norms=randomize_batch_norms,
                           silence_zero_channels=silence_zero_channels, train_step=train_step)
