"""Channel groups: the layers that must lose the same channels together, and why a group cannot, if so."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .zeros import Zeros


@dataclass
class Consumer:
    """A layer reading a group's channels: its input dimension loses the removed channels."""

    module: str
    #: features per channel in the layer's input (1, or H*W for a linear layer after a flatten)
    factor: int = 1


@dataclass
class ChannelGroup:
    """Tensors whose channels are removed together; ``blocked`` says why they cannot be, if they cannot.

    ``producers`` create the channels (filters of convolutions, rows of linear layers), ``per_channel``
    layers carry them (batch norm, depthwise and grouped convolutions), ``consumers`` read them. ``reads`` says
    where the tensors the consumers read are zero (``zeros.py``); ``block`` is how many neighbouring channels
    must go together (the group width of a grouped convolution on the way, 1 otherwise).
    """

    channels: int
    producers: List[str] = field(default_factory=list)
    per_channel: List[str] = field(default_factory=list)
    consumers: List[Consumer] = field(default_factory=list)
    blocked: Optional[str] = None
    reads: List[Zeros] = field(default_factory=list)
    block: int = 1

    @property
    def removable(self) -> bool:
        """True when channels of this group can be removed."""
        return self.blocked is None
