"""SkipNet (Wang et al., 2018): a gate before each routed block decides, from the block's input, whether it runs.

``SkipGates`` is the schedule component (section ``routing``)::

    routing:
      skip:
        class: SkipGates
        blocks: ['layer*.*']    # names or patterns; downsampling blocks are left out of patterns
        gate: ffn               # ffn: a feed-forward gate per block; rnn: one LSTM gate shared by all blocks
        hidden: 16

Its policy entry (``policies.routing``) trains the gates: the supervised phase with soft or straight-through
hard gates and SkipNet's cost term, then the hybrid reinforcement-learning phase.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Sequence

import torch
from torch import nn

from ..arguments import Range
from ..context import BuildContext
from ..errors import DistillEEError
from ..registry import ROUTING
from .blocks import BlockFacts
from .component import Routing, build_routing
from .gates import FFGate, RNNGate
from .router import RoutingSet


#: a gate's hidden or embedding width (bounded: a typo must not allocate gigabytes)
Width = Annotated[int, Range(1, 4096, integer=True)]


class SkipGateSet(RoutingSet):
    """Routed blocks decided by SkipNet gates (one ``FFGate`` per block, or one shared ``RNNGate``)."""

    def __init__(self, blocks: Sequence[str], block_macs: Sequence[int], backbone_macs: int,
                 channels: Sequence[int], *, gate: str = "ffn", hidden: int = 16, embed: int = 16,
                 instance_name: str = "", class_name: str = "SkipGates"):
        super().__init__(blocks, block_macs, backbone_macs, instance_name=instance_name, class_name=class_name)
        self.gate_kind, self.hidden, self.embed = gate, int(hidden), int(embed)
        self.channels = [int(c) for c in channels]
        if gate == "rnn":
            self.gates: nn.Module = RNNGate(self.channels, hidden, embed)
        else:
            self.gates = nn.ModuleList([FFGate(c, hidden) for c in self.channels])

    def keep_probability(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """The gate's sigmoid for each row of block ``k``'s input."""
        if x.dim() < 2 or x.shape[1] != self.channels[k]:
            raise DistillEEError(f"block {self.block_names[k]!r} now reads {x.shape[1] if x.dim() > 1 else '?'} "
                                 f"channels where its gate reads {self.channels[k]}: thinning removed channels a "
                                 "routing gate reads; thin only inside routed blocks (layerX.Y.conv1 filters)")
        logits = self.gates(k, x) if isinstance(self.gates, RNNGate) else self.gates[k](x)
        return torch.sigmoid(logits)

    def begin_rows(self, x: torch.Tensor) -> None:
        """A new forward pass: the recurrent gate forgets its state."""
        if isinstance(self.gates, RNNGate):
            self.gates.reset()

    def select_rows(self, keep: torch.Tensor) -> None:
        """The recurrent gate's state follows the samples that go on."""
        if isinstance(self.gates, RNNGate):
            self.gates.select_rows(keep)

    def decider_macs(self) -> List[int]:
        """Each block's gate, then nothing paid once per input."""
        per_block = self.gates.macs() if isinstance(self.gates, RNNGate) else [g.macs() for g in self.gates]
        return [*per_block, 0]

    def config(self) -> Dict[str, Any]:
        """Blocks and gate settings."""
        return {"blocks": list(self.block_names), "gate": self.gate_kind, "hidden": self.hidden,
                "embed": self.embed}


@ROUTING.register("SkipGates")
class SkipGates(Routing):
    """Schedule component: SkipNet gates on the named residual blocks."""

    @classmethod
    def build(cls, ctx: BuildContext, blocks: List[str], gate: Literal["ffn", "rnn"] = "ffn",
              hidden: Width = 16, embed: Width = 16) -> "SkipGates":
        """Gate the blocks of ``ctx.model`` and give the gates to the optimizer."""
        return build_routing(cls, ctx, {"blocks": blocks, "gate": gate, "hidden": hidden, "embed": embed})

    @classmethod
    def make_set(cls, model: nn.Module, facts: BlockFacts, config: Dict[str, Any], name: str) -> SkipGateSet:
        """A gate per block (or one recurrent gate) over each block's input channels."""
        return SkipGateSet(facts.blocks, facts.block_macs, facts.backbone_macs, facts.channels,
                           gate=str(config.get("gate", "ffn")), hidden=int(config.get("hidden", 16)),
                           embed=int(config.get("embed", 16)), instance_name=name)
