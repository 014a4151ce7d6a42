"""The torch layers of the branch layers for transformers: token sequences (N, T, D) and channel-last
features (N, H, W, C), as ViT and Swin give them.

Each is a plain module with no parameters whose forward is one indexing, mean or permute, so it traces,
scripts and exports to ONNX as the built-in layers do; the builders that check shapes live in ``branch.py``.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class TokenAt(nn.Module):
    """Token ``index`` of a sequence: (N, T, D) -> (N, D) (ViT's class token is token 0)."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The token's features."""
        return x[:, self.index]

    def extra_repr(self) -> str:
        """``index=0``."""
        return f"index={self.index}"


class TokenMean(nn.Module):
    """The mean over every dimension between the batch and the last: (N, T, D) -> (N, D), (N, H, W, C) -> (N, C)."""

    def __init__(self, dims: Tuple[int, ...]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean token."""
        return x.mean(dim=self.dims)

    def extra_repr(self) -> str:
        """``dims=(1,)``."""
        return f"dims={self.dims}"


class ChannelsFirst(nn.Module):
    """Channel-last features to channel-first: (N, H, W, C) -> (N, C, H, W), so image layers can follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The permuted features."""
        return x.permute(0, 3, 1, 2)
