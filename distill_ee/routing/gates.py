"""SkipNet's gates (Wang et al., 2018): small heads that read a block's input and give its keep probability.

* ``FFGate`` (one per block): global average pooling, a hidden layer, one logit (the paper's FFGate-I, with
  pooling first so that its cost stays a fraction of a percent of the block's).
* ``RNNGate`` (one shared by all blocks): each block's pooled input is projected to a common width and fed to
  one LSTM cell whose state runs from block to block within a forward pass (the paper's RNNGate); a shared
  linear head gives the logit. Its state has a row per sample and follows the batch when it shrinks.

Gates read activations only, never labels. They start biased towards keeping (p = sigmoid(2) = 0.88), so that
a pretrained network is unchanged when gating begins.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

#: initial logit bias: blocks start almost always kept
KEEP_BIAS = 2.0


def _pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C) channel means of a (N, C, ...) activation."""
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


class FFGate(nn.Module):
    """Pooled input -> hidden layer -> keep logit, for one block."""

    def __init__(self, channels: int, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.constant_(self.fc2.bias, KEEP_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Keep logits (N,)."""
        return self.fc2(self.relu(self.fc1(_pool(x)))).squeeze(1)

    def macs(self) -> int:
        """MACs per sample (pooling not counted, as for the backbone)."""
        return self.fc1.in_features * self.fc1.out_features + self.fc2.in_features


class RNNGate(nn.Module):
    """One LSTM cell shared by every gated block, with a projection per block; stateful across blocks."""

    def __init__(self, channels: Sequence[int], hidden: int = 16, embed: int = 16):
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(c, embed) for c in channels])
        self.cell = nn.LSTMCell(embed, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.constant_(self.head.bias, KEEP_BIAS)
        self.state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def reset(self) -> None:
        """Forget the state: a new forward pass starts."""
        self.state = None

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep the state rows of the samples that go on."""
        if self.state is not None:
            self.state = (self.state[0].index_select(0, keep), self.state[1].index_select(0, keep))

    def forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Keep logits (N,) of block ``k``, advancing the state."""
        h = self.cell(self.proj[k](_pool(x)), self.state)
        self.state = h
        return self.head(h[0]).squeeze(1)

    def macs(self) -> List[int]:
        """MACs per sample at each block (projection, LSTM cell, head)."""
        cell = 4 * self.cell.hidden_size * (self.cell.input_size + self.cell.hidden_size)
        return [p.in_features * p.out_features + cell + self.head.in_features for p in self.proj]
