"""BlockDrop (Wu et al., 2018): a policy network reads the image once and decides which blocks run for it.

``BlockDrop`` is the schedule component (section ``routing``)::

    routing:
      drop:
        class: BlockDrop
        blocks: ['layer*.*']
        policy_width: 16        # the policy network: a tiny ResNet on the image downsampled by 2
        policy_blocks: 1
        policy_downsample: 2

Its policy entry trains the policy network with REINFORCE (the paper's reward, exploration bound,
self-critical greedy baseline and curriculum), with the backbone frozen unless ``freeze_backbone: false``
(the joint fine-tuning phase). The functions below are the paper's equations, used by the policy.
"""
from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence

import torch
import torch.fx
from torch import nn

from ..arguments import ArgumentError, PositiveInt, Range
from ..context import BuildContext
from ..errors import DistillEEError
from ..registry import ROUTING
from ..summaries import module_macs
from .blocks import BlockFacts
from .component import Routing, build_routing
from .policy_net import PolicyNet
from .router import RoutingSet
from .skipnet import Width


def exploration_bound(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """s' = alpha * s + (1 - alpha) * (1 - s): keep probabilities bounded away from 0 and 1 while exploring."""
    return alpha * s + (1.0 - alpha) * (1.0 - s)


def block_reward(pattern: torch.Tensor, correct: torch.Tensor, penalty: float) -> torch.Tensor:
    """R = 1 - (|u|_0 / K)^2 for a correct prediction, ``penalty`` (-gamma) otherwise; one value per row."""
    usage = pattern.float().sum(dim=1) / pattern.shape[1]
    return torch.where(correct, 1.0 - usage ** 2, torch.full_like(usage, float(penalty)))


def curriculum_blocks(epochs_done: int, num_blocks: int, step: int) -> int:
    """Blocks decided (the last ones) after ``epochs_done`` epochs of policy learning: one more every ``step``
    epochs, starting with one; all of them with ``step`` 0 (no curriculum)."""
    if step <= 0:
        return num_blocks
    return min(num_blocks, 1 + epochs_done // step)


class BlockDropSet(RoutingSet):
    """Routed blocks decided once per input by a policy network (keep probabilities s, one per block)."""

    def __init__(self, blocks: Sequence[str], block_macs: Sequence[int], backbone_macs: int, in_channels: int, *,
                 width: int = 16, depth: int = 1, downsample: int = 2, batch_strategy: str = "patterns",
                 instance_name: str = ""):
        super().__init__(blocks, block_macs, backbone_macs, instance_name=instance_name, class_name="BlockDrop")
        self.width, self.depth, self.downsample = int(width), int(depth), int(downsample)
        #: how ``model(x)`` skips at batch N: ``patterns`` groups the samples by pattern, each group run with
        #: its dropped blocks not called; ``rows`` selects each block's kept rows
        self.batch_strategy = batch_strategy
        self.policy_net = PolicyNet(in_channels, len(blocks), width, depth, downsample)
        self._probs: Optional[torch.Tensor] = None
        self._policy_macs = 0
        #: a fixed (N, K) 0/1 pattern used instead of the policy network's (the greedy baseline's forward pass)
        self.pattern_override: Optional[torch.Tensor] = None

    def begin_rows(self, x: torch.Tensor) -> None:
        """The policy network reads the input: keep probabilities for every block, per row."""
        if not self.routes():
            self._probs = None
        elif self.pattern_override is not None:
            self._probs = self.pattern_override
        else:
            self._probs = torch.sigmoid(self.policy_net(x))

    def select_rows(self, keep: torch.Tensor) -> None:
        """The probabilities follow the samples that go on."""
        if self._probs is not None:
            self._probs = self._probs.index_select(0, keep)

    def keep_probability(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Column ``k`` of the policy's probabilities for the live rows."""
        probs = self._probs
        if probs is None or probs.shape[0] != x.shape[0]:
            raise DistillEEError("BlockDrop's decisions are made on the network's input: run the model (or its "
                                 "stages through distill_ee's multi-exit runtime), not a block alone")
        return probs[:, k]

    def run_model(self, model: nn.Module, x: torch.Tensor) -> Any:
        """In eval at batch N with ``batch_strategy: patterns``: the samples grouped by their greedy pattern
        and each group run through the network (its dropped blocks not called, no rows selected inside), the
        outputs put back in order. Otherwise the model's own forward (rows selected per block)."""
        forward = type(model).forward
        if self.training or not self.routes() or self.batch_strategy != "patterns" or x.shape[0] == 1 \
                or self.pattern_override is not None or isinstance(x, torch.fx.Proxy):
            return forward(model, x)
        probs = self._probs if self._probs is not None and self._probs.shape[0] == x.shape[0] \
            else self.policy_probabilities(x)
        on = probs > 0.5
        on[:, :self.num_blocks - self.decided] = True
        patterns, inverse = torch.unique(on, dim=0, return_inverse=True)
        if patterns.shape[0] == 1:
            self._probs = on.to(probs.dtype)
            return forward(model, x)
        out: Optional[torch.Tensor] = None
        for g in range(patterns.shape[0]):
            rows = (inverse == g).nonzero().squeeze(1)
            self._probs = patterns[g].to(probs.dtype).expand(rows.shape[0], -1)
            y = forward(model, x.index_select(0, rows))
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out.index_copy_(0, rows, y)
        return out

    def policy_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Keep probabilities (N, K) of the policy network for images ``x``."""
        return torch.sigmoid(self.policy_net(x))

    def decider_macs(self) -> List[int]:
        """Nothing per block; the policy network once per input, last."""
        return [*([0] * self.num_blocks), self._policy_macs]

    def measure_policy(self, input_shape: Sequence[int]) -> None:
        """Count the policy network's MACs on one input of ``input_shape``."""
        x = torch.zeros(1, *input_shape, device=next(self.policy_net.parameters()).device)
        self._policy_macs = sum(r.dense_macs for r in module_macs(self.policy_net, x))

    def config(self) -> Dict[str, Any]:
        """Blocks and policy-network settings."""
        return {"blocks": list(self.block_names), "policy_width": self.width, "policy_blocks": self.depth,
                "policy_downsample": self.downsample, "batch_strategy": self.batch_strategy}


@ROUTING.register("BlockDrop")
class BlockDrop(Routing):
    """Schedule component: a BlockDrop policy network deciding the named residual blocks."""

    @classmethod
    def build(cls, ctx: BuildContext, blocks: List[str], policy_width: Width = 16,
              policy_blocks: Annotated[int, Range(1, 64, integer=True)] = 1,
              policy_downsample: PositiveInt = 2,
              batch_strategy: Literal["patterns", "rows"] = "patterns") -> "BlockDrop":
        """Attach the policy network to ``ctx.model`` and give it to the optimizer."""
        shape = ctx.input_shape
        if len(shape) != 3:
            raise DistillEEError(f"BlockDrop's policy network reads images (C, H, W); the input is {tuple(shape)}")
        if min(shape[1:]) < 2 * policy_downsample:
            raise ArgumentError(f"{policy_downsample} leaves less than 2 pixels of a {shape[1]}x{shape[2]} input",
                                ("policy_downsample",))
        return build_routing(cls, ctx, {"blocks": blocks, "policy_width": policy_width,
                                        "policy_blocks": policy_blocks, "policy_downsample": policy_downsample,
                                        "batch_strategy": batch_strategy})

    @classmethod
    def make_set(cls, model: nn.Module, facts: BlockFacts, config: Dict[str, Any], name: str) -> BlockDropSet:
        """The policy network over the input image, one keep probability per block."""
        made = BlockDropSet(facts.blocks, facts.block_macs, facts.backbone_macs, int(facts.input_shape[0]),
                            width=int(config.get("policy_width", 16)), depth=int(config.get("policy_blocks", 1)),
                            downsample=int(config.get("policy_downsample", 2)),
                            batch_strategy=str(config.get("batch_strategy", "patterns")), instance_name=name)
        made.measure_policy(facts.input_shape)
        return made
