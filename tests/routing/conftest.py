"""Fixtures of the routing tests."""
import pytest
import torch

from routing_support import INPUT


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, *INPUT, generator=gen), torch.randint(0, 4, (32,), generator=gen)
