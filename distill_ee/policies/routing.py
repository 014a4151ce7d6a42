"""Routing policies: train SkipNet gates or a BlockDrop policy network over the epochs a schedule gives.

A ``routing`` policy entry schedules a ``routing`` component; what it does depends on the component's class::

    policies:
      - routing: {instance_name: skip, args: {phase: supervised, alpha: 0.2, hard: true}}
        starting_epoch: 0
        ending_epoch: 8
      - routing: {instance_name: skip, args: {phase: reinforce, alpha: 0.2}}
        starting_epoch: 8
        ending_epoch: 10

**SkipGates** (Wang et al., 2018, section 3):

* ``phase: supervised``: soft gates, or straight-through hard gates (``hard: true``, the default), trained with
  the task loss plus the cost term ``alpha * (1/N) sum_n sum_i g_i(x_n) * C_i``, where C_i is block i's share
  of the backbone's MACs (measured) and N the batch size.
* ``phase: reinforce``, the hybrid learning algorithm: hard gate actions sampled from the gates' Bernoulli
  distributions; the backbone learns from the task loss along the taken path, the gates by REINFORCE with the
  reward ``R = -CE - alpha * sum_i a_i * C_i`` per sample (computation used is penalised), the batch's mean
  reward as the baseline.

**BlockDrop** (Wu et al., 2018, section 3): the policy network's keep probabilities s are bounded for
exploration, ``s' = alpha * s + (1 - alpha) * (1 - s)`` (``alpha``, default 0.8); a pattern u ~ Bernoulli(s')
runs the backbone; the reward is ``1 - (|u|_0 / K)^2`` when the prediction is right and ``penalty`` (-gamma,
default -1) otherwise; the greedy pattern (s > 0.5) run on the same inputs is the self-critical baseline;
an entropy bonus (``entropy_weight``, default 0.1) keeps exploring. With ``curriculum_step: c`` only the last
``1 + t // c`` blocks are decided in the entry's t-th epoch (the others always run). The backbone is frozen,
batch-norm statistics included, unless ``freeze_backbone: false`` (the joint fine-tuning phase, in which the
backbone also learns from the task loss along the sampled pattern); exit branches are not the backbone and
keep training under their own policy.

Before a routing policy's first epoch every block runs (a backbone can be trained first); afterwards, training
outside the routing windows uses the greedy decisions, and inference skips blocks for real.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Dict, List, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import ArgumentError, NonNegativeInt, Range
from ..distributed import sum_across
from ..errors import DistillEEError
from ..modules import unwrap
from ..registry import ROUTING, Section, add_section
from ..routing.blockdrop import BlockDrop, block_reward, curriculum_blocks
from ..routing.component import Routing
from ..routing.router import RoutingSet
from ..routing.skipnet import SkipGates
from .base import HookContext, LossComponent, Policy, PolicyLoss
from .freeze import BackboneFreeze

SKIPNET_ONLY = ("hard",)
BLOCKDROP_ONLY = ("penalty", "entropy_weight", "curriculum_step")


@dataclass
class RoutingArgs:
    """The ``args`` of a routing policy entry (which apply depends on the component's class)."""

    phase: Optional[Literal["supervised", "reinforce"]] = None
    alpha: Optional[Annotated[float, Range(0.0)]] = None
    hard: Optional[bool] = None
    freeze_backbone: Optional[bool] = None
    penalty: Optional[float] = None
    entropy_weight: Optional[Annotated[float, Range(0.0)]] = None
    curriculum_step: Optional[NonNegativeInt] = None


class RoutingPolicy(Policy):
    """Trains a model's routing over the policy's window; subclasses give the loss."""

    kind = "routing"
    Args = RoutingArgs
    needs_minibatch_hooks = True
    changes_masks_in_minibatches = False
    may_overlap = False
    #: the routing set's training mode in a due epoch
    train_mode = "greedy"

    def __init__(self, routing: Routing, name: str = "", freeze_backbone: bool = False):
        super().__init__(name or routing.name)
        self.routing = routing
        self.freeze_backbone = freeze_backbone
        self._freeze = BackboneFreeze()
        self._running = False
        self._sums = torch.zeros(3)  # executed decisions, decisions, samples
        self._extra: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_component(cls, component: Any, args: Optional[RoutingArgs], name: str) -> "RoutingPolicy":
        """The policy training ``component`` (SkipGates or BlockDrop) with the entry's ``args``."""
        args = args or RoutingArgs()
        policy = next((p for kind, p in POLICY_OF.items() if isinstance(component, kind)), None)
        if policy is None:
            raise DistillEEError(f"no routing policy trains {type(component).__name__}")
        for component_type, other in POLICY_OF.items():
            if other is not policy:
                _refuse(args, other.own_args, component_type.__name__)
        return policy.from_args(component, args, name)

    @property
    def trains_routing(self) -> bool:
        """True from a due epoch's begin to its end: training steps use (and train) the gates or policy."""
        return self._running

    def trained_parameters(self) -> List[nn.Parameter]:
        """The gates' or policy network's parameters while the policy runs (nothing trains them otherwise)."""
        return list(self.set.parameters()) if self._running else []

    @property
    def set(self) -> RoutingSet:
        """The model's RoutingSet (looked up each time: a checkpoint may have replaced it)."""
        return self.routing.set

    # ----------------------------------------------------------------- hooks
    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Routing on, in this policy's training mode; the backbone frozen when asked."""
        routing = self.set
        routing.measure(unwrap(ctx.model), routing.input_shape)  # thinning may have changed the blocks' costs
        routing.active = True
        routing.train_mode = self.train_mode
        routing.capture = True
        self._running = True
        if self.freeze_backbone:
            self._freeze.freeze(ctx.model)

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """A frozen backbone runs in eval mode (its batch-norm statistics stay); the routing set trains."""
        routing = self.set
        routing.train_mode = self.train_mode
        routing.capture = True
        if self.freeze_backbone and routing.training:
            self._freeze.step_begin(ctx.model)

    def on_minibatch_end(self, ctx: HookContext) -> None:
        """The frozen backbone's modules get their training mode back (validation and the loop see theirs)."""
        self._freeze.step_end()

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Greedy decisions outside the window; the backbone unfrozen."""
        routing = self.set
        routing.train_mode = "greedy"
        routing.capture = False
        routing.last_input = routing.last_output = None
        self._running = False
        self._freeze.release()

    def _trace(self, ctx: HookContext) -> list:
        trace = [r for r in self.set.trace]
        if not trace:
            raise DistillEEError("routing found no decisions of the forward pass: the model ran without its routing "
                                 "(call the scheduler's hooks around model(x) in training mode)")
        return trace

    def _count(self, gates: torch.Tensor, n: int) -> None:
        with torch.no_grad():
            self._sums = self._sums.to(gates.device) + torch.stack(
                [(gates > 0.5).sum().to(self._sums.dtype), torch.tensor(float(gates.numel()), device=gates.device),
                 torch.tensor(float(n), device=gates.device)])

    def _add_metric(self, key: str, value: torch.Tensor, n: int) -> None:
        with torch.no_grad():
            self._extra[key] = self._extra.get(key, torch.zeros((), device=value.device)) + value.detach() * n

    def epoch_metrics(self) -> Dict[str, float]:
        """Share of routed blocks executed in the epoch's training steps (and the mean reward); then reset.

        Under torch.distributed the figures cover every process's batches (a collective)."""
        keys = sorted(self._extra)
        flat = sum_across([float(v) for v in self._sums] + [float(self._extra[k]) for k in keys])
        out: Dict[str, float] = {}
        if flat[1]:
            out[f"{self.name}_executed"] = flat[0] / flat[1]
        for k, v in zip(keys, flat[3:]):
            if flat[2]:
                out[f"{self.name}_{k}"] = v / flat[2]
        self._sums = torch.zeros(3)
        self._extra = {}
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, blocks={self.set.block_names})"


def _refuse(args: RoutingArgs, names: tuple, owner: str) -> None:
    for name in names:
        if getattr(args, name) is not None:
            raise ArgumentError(f"applies to {owner} routing only", (name,))


def _labels(target: torch.Tensor) -> torch.Tensor:
    return target.argmax(dim=1) if target.dim() == 2 else target


class SkipNetPolicy(RoutingPolicy):
    """SkipNet's supervised phase (cost-regularised soft or hard gates) or hybrid RL phase."""

    #: the entry args only this policy takes
    own_args = SKIPNET_ONLY

    def __init__(self, routing: Routing, name: str, phase: str, alpha: float, hard: bool, freeze: bool):
        super().__init__(routing, name, freeze_backbone=freeze)
        self.phase, self.alpha, self.hard = phase, float(alpha), bool(hard)
        self.train_mode = "sample" if phase == "reinforce" else ("hard" if hard else "soft")

    @classmethod
    def from_args(cls, routing: Routing, args: RoutingArgs, name: str) -> "SkipNetPolicy":
        """From a policy entry's args (defaults: supervised, alpha 0.1, hard gates, backbone trained)."""
        hard = True if args.hard is None else args.hard
        if args.phase == "reinforce" and args.hard is False:
            raise ArgumentError("the reinforce phase samples hard gates; soft gates belong to the supervised phase",
                                ("hard",))
        return cls(routing, name, args.phase or "supervised", 0.1 if args.alpha is None else args.alpha, hard,
                   bool(args.freeze_backbone))

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """Add the cost term (supervised) or the REINFORCE term (reinforce) to the loss."""
        if ctx.loss is None:
            raise DistillEEError("routing needs the loss in before_backward_pass")
        trace = self._trace(ctx)
        costs = torch.tensor([self.set.costs[r.block] for r in trace], device=ctx.loss.device)
        gates = torch.stack([r.gate for r in trace], dim=1)  # (N, K)
        n = gates.shape[0]
        self._count(gates.detach(), n)
        used = (gates * costs).sum(dim=1)  # share of the backbone's MACs each sample used in the routed blocks
        self._add_metric("cost", used.mean(), n)
        if self.phase == "supervised":
            term = self.alpha * used.mean()
            return PolicyLoss(ctx.loss + term, [LossComponent("routing_cost", term)])
        if ctx.target is None:
            raise DistillEEError("the reinforce phase needs the target in before_backward_pass")
        output = self.set.last_output
        if output is None or output.shape[0] != n:
            raise DistillEEError("the reinforce phase needs the model's logits of this forward pass")
        reward = -F.cross_entropy(output, ctx.target, reduction="none") - self.alpha * used.detach()
        advantage = reward - reward.mean()
        log_prob = torch.stack([r.log_prob for r in trace], dim=1).sum(dim=1)
        term = -(advantage.detach() * log_prob).mean()
        self._add_metric("reward", reward.mean(), n)
        return PolicyLoss(ctx.loss + term, [LossComponent("routing_reinforce", term)])


class BlockDropPolicy(RoutingPolicy):
    """BlockDrop's curriculum policy learning (frozen backbone) or joint fine-tuning."""

    own_args = BLOCKDROP_ONLY

    train_mode = "sample"

    def __init__(self, routing: Routing, name: str, alpha: float, penalty: float, entropy_weight: float,
                 curriculum_step: int, freeze: bool):
        super().__init__(routing, name, freeze_backbone=freeze)
        self.alpha, self.penalty, self.entropy_weight = float(alpha), float(penalty), float(entropy_weight)
        self.curriculum_step = int(curriculum_step)

    @classmethod
    def from_args(cls, routing: Routing, args: RoutingArgs, name: str) -> "BlockDropPolicy":
        """From a policy entry's args (defaults: alpha 0.8, penalty -1, entropy 0.1, backbone frozen with a
        curriculum of one more block per epoch; no curriculum in joint fine-tuning)."""
        if args.phase == "supervised":
            raise ArgumentError("BlockDrop is trained by reinforcement learning (phase: reinforce)", ("phase",))
        alpha = 0.8 if args.alpha is None else args.alpha
        if not 0.5 <= alpha <= 1.0:
            raise ArgumentError(f"BlockDrop's exploration bound must be in [0.5, 1], got {alpha!r}", ("alpha",))
        freeze = True if args.freeze_backbone is None else args.freeze_backbone
        step = args.curriculum_step if args.curriculum_step is not None else (1 if freeze else 0)
        return cls(routing, name, alpha, -1.0 if args.penalty is None else args.penalty,
                   0.1 if args.entropy_weight is None else args.entropy_weight, step, freeze)

    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Routing on; the curriculum sets how many of the last blocks are decided this epoch."""
        super().on_epoch_begin(ctx)
        routing = self.set
        routing.exploration = self.alpha
        done = len([e for e in self.due_epochs if e < ctx.epoch])
        routing.decided = curriculum_blocks(done, routing.num_blocks, self.curriculum_step)

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """Self-critical REINFORCE: the sampled pattern's reward against the greedy pattern's."""
        if ctx.loss is None or ctx.target is None:
            raise DistillEEError("BlockDrop needs the loss and the target in before_backward_pass")
        routing = self.set
        trace = self._trace(ctx)
        output, x = routing.last_output, routing.last_input
        if output is None or x is None:
            raise DistillEEError("BlockDrop needs the model's input and logits of this forward pass")
        labels = _labels(ctx.target)
        sampled = torch.stack([r.gate for r in trace], dim=1).detach()
        greedy = torch.stack([torch.ones_like(r.prob) if r.forced else (r.prob.detach() > 0.5).to(r.prob.dtype)
                              for r in trace], dim=1)
        reward = block_reward(sampled, output.argmax(dim=1) == labels, self.penalty)
        baseline = block_reward(greedy, self._greedy_output(ctx, x, greedy).argmax(dim=1) == labels, self.penalty)
        advantage = reward - baseline
        decided = [r for r in trace if not r.forced]
        n = x.shape[0]
        self._count(sampled, n)
        self._add_metric("reward", reward.mean(), n)
        if not decided:
            return None
        log_prob = torch.stack([r.log_prob for r in decided], dim=1)
        explored = torch.stack([r.explored for r in decided], dim=1)
        entropy = -(explored * explored.log()).sum()
        term = (-(log_prob * advantage.unsqueeze(1)).sum() - self.entropy_weight * entropy) / n
        return PolicyLoss(ctx.loss + term, [LossComponent("routing_reinforce", term)])

    def _greedy_output(self, ctx: HookContext, x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        """The model's logits on ``x`` with ``pattern`` (the greedy one), without gradients."""
        routing = self.set
        routing.pattern_override = pattern
        routing.train_mode = "greedy"
        try:
            with torch.no_grad():
                out = unwrap(ctx.model)(x)
        finally:
            routing.pattern_override = None
            routing.train_mode = self.train_mode
        return out


#: the policy that trains each routing class (one table, keyed by the component's type)
POLICY_OF: Dict[type, Any] = {SkipGates: SkipNetPolicy, BlockDrop: BlockDropPolicy}

add_section(Section("routing", "routing", ROUTING, order=55, policy=RoutingPolicy, build_order=0))
