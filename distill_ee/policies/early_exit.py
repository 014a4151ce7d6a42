"""EarlyExitPolicy: trains a model's exits jointly with it, in the epochs the schedule gives (BranchyNet).

Lifecycle::

    EarlyExits.build(ctx, **config)  # the early_exits component: branches attached, in the optimizer
    on_epoch_begin(ctx)          # due epoch: hooks on, model(x) also computes every exit's logits
      before_backward_pass(ctx)  # loss = w_final * task loss + sum_k w_k * CE(exit_k, target)
    on_epoch_end(ctx)            # hooks off: branches cost nothing until the next due epoch
    epoch_metrics()              # {"exit1_loss": ..., "exit1_top1": ...} of the epoch, then reset

Loss weights are constants or ramps over the policy's window (``Policy.progress``); ``final_loss_weight:
auto`` is 1 - sum of the exits' weights. Inference, thresholds and statistics belong to the exits
(``policy.exits``, an ``EarlyExits``), not to the policy.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..distributed import sum_across
from ..early_exit.calibrate import exit_costs
from ..early_exit.exits import EarlyExits
from ..early_exit.gates import soft_conditional_loss
from ..early_exit.hooks import ExitHooks
from ..errors import DistillEEError
from ..modules import unwrap
from ..registry import EARLY_EXITS, Section, add_section
from .base import HookContext, LossComponent, Policy, PolicyLoss


class EarlyExitPolicy(Policy):
    """The joint training of a model's exit branches over the policy's window."""

    kind = "early_exit"
    needs_minibatch_hooks = True
    changes_masks_in_minibatches = False
    may_overlap = False  # two joint losses of the same exits in one step would each pop the same logits

    def __init__(self, exits: EarlyExits, name: str = ""):
        super().__init__(name or exits.name)
        self.exits = exits
        self.hooks = ExitHooks(exits.model)
        self._weights: Optional[Tuple[int, Tuple[List[float], float]]] = None
        self._gate_weights: Optional[Tuple[int, Tuple[float, float]]] = None
        self._costs: List[float] = []  # each output's cost over the backbone's MACs (gates only)
        self._sums: List[Dict[str, torch.Tensor]] = []
        self._cost_sum = torch.zeros(())
        self._reset_metrics()

    @classmethod
    def from_component(cls, component: Any, args: Any, name: str) -> "EarlyExitPolicy":
        """The policy training ``component`` (an EarlyExits)."""
        return cls(component, name=name)

    def loss_weights(self, epoch: int) -> Tuple[List[float], float]:
        """(exit weights, final classifier weight) in ``epoch``."""
        if self._weights is None or self._weights[0] != epoch:
            spec = self.exits.spec
            weights = spec.exit_weights(self.progress(epoch))
            self._weights = (epoch, (weights, spec.final_weight(weights)))
        return self._weights[1]

    def gate_weights(self, epoch: int) -> Optional[Tuple[float, float]]:
        """(soft-conditional loss weight, cost weight lambda) in ``epoch``; None unless the exits are gated."""
        gate = self.exits.spec.gate if self._gated() else None
        if gate is None:
            return None
        if self._gate_weights is None or self._gate_weights[0] != epoch:
            progress = self.progress(epoch)
            self._gate_weights = (epoch, (gate.loss_weight.at(progress), gate.cost_weight.at(progress)))
        return self._gate_weights[1]

    def _gated(self) -> bool:
        return "gate" in self.exits.exit_set.criteria

    @property
    def trains_branches(self) -> bool:
        """True from a due epoch's begin to its end: training forward passes run every branch."""
        return self.hooks.enabled

    def trained_parameters(self) -> List[torch.nn.Parameter]:
        """What the joint loss trains: every branch, and the gates of gated exits (not the deciders of a
        learned policy, which are trained after the network)."""
        exit_set = self.exits.exit_set
        params = [p for branch in exit_set.branch_list() for p in branch.parameters()]
        if self._gated():
            params += [p for d in exit_set.learned_deciders.values() for p in d.parameters()]
        return params

    # ----------------------------------------------------------------- hooks
    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Due epoch: install the hooks so ``model(x)`` computes the exits' logits (and, for gated exits,
        price each output in MACs for the cost regulariser)."""
        self.hooks.enable()
        if self._gated():
            costs = exit_costs(self.exits.multi_exit_model(), unwrap(self.exits.model), ctx.masks)
            self._costs = [m / costs.full_macs for m in costs.macs_per_exit]

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """Make sure the hooks are on (also when the epoch hook was skipped)."""
        self.hooks.enable()

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """Joint loss: final weight * the task loss + each exit's weight * its cross-entropy (terms that
        earlier policies added to ``ctx.loss`` are kept as they are)."""
        if ctx.loss is None or ctx.target is None:
            raise DistillEEError("early exits need the loss and the target in before_backward_pass "
                                 "(scheduler.before_backward_pass(..., loss, target=y))")
        logits = self.hooks.pop_logits()
        weights, final_weight = self.loss_weights(ctx.epoch)
        task = ctx.loss if ctx.task_loss is None else ctx.task_loss
        overall = ctx.loss + task * (final_weight - 1.0)
        components = []
        for name, exit_logits, weight, sums in zip(self.exits.exit_names, logits, weights, self._sums):
            ce = F.cross_entropy(exit_logits, ctx.target)
            weighted = ce * weight
            overall = overall + weighted
            components.append(LossComponent(f"{name}_loss", weighted))
            self._accumulate(sums, ce, exit_logits, ctx.target)
        gate_weights = self.gate_weights(ctx.epoch)
        if gate_weights is not None:
            overall = self._gate_loss(logits, ctx.target, overall, gate_weights, components)
        return PolicyLoss(overall, components)

    def _gate_loss(self, logits: List[torch.Tensor], target: torch.Tensor, overall: torch.Tensor,
                   weights: Tuple[float, float], components: List[LossComponent]) -> torch.Tensor:
        """Add the soft-conditional cross-entropy and lambda times the expected cost (Scardapane et al.)."""
        if not self._costs:
            raise DistillEEError("gated exits need on_epoch_begin before the first step (it prices each exit)")
        deciders = self.exits.exit_set.learned_deciders
        # A gate reads its exit's logits without steering them: through the gate, the cost term would teach a
        # branch to look confident (and its gate to open) whether it is right or not.
        gates = [deciders[n](l.detach()) for n, l in zip(self.exits.exit_names, logits)]
        ce, cost = soft_conditional_loss([*logits, self.hooks.pop_final()], gates, self._costs, target)
        loss_weight, cost_weight = weights
        components.append(LossComponent("soft_conditional_loss", ce * loss_weight))
        components.append(LossComponent("exit_cost", cost * cost_weight))
        with torch.no_grad():
            self._cost_sum = self._cost_sum.to(cost.device) + cost.detach() * target.shape[0]
        return overall + ce * loss_weight + cost * cost_weight

    def pending_outputs(self) -> List[torch.Tensor]:
        """The exit logits of the last forward pass, until the loss takes them."""
        return self.hooks.pending()

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Remove the hooks until the next due epoch."""
        self.hooks.disable()

    # ----------------------------------------------------------------- training metrics
    def _reset_metrics(self) -> None:
        zero = torch.zeros(())
        self._cost_sum = zero
        self._sums = [{"loss": zero, "correct": zero, "count": zero} for _ in self.exits.exit_names]

    @staticmethod
    def _accumulate(sums: Dict[str, torch.Tensor], ce: torch.Tensor, logits: torch.Tensor,
                    target: torch.Tensor) -> None:
        """Add one minibatch (kept as tensors: no device sync per step)."""
        with torch.no_grad():
            labels = target.argmax(dim=1) if target.dim() == 2 else target
            n = logits.shape[0]
            sums["loss"] = sums["loss"].to(ce.device) + ce.detach() * n
            sums["correct"] = sums["correct"].to(ce.device) + (logits.argmax(dim=1) == labels).sum()
            sums["count"] = sums["count"].to(ce.device) + n

    def epoch_metrics(self) -> Dict[str, float]:
        """Mean cross-entropy and top-1 (0-100) of each exit on the epoch's training batches; then reset.

        Under torch.distributed the figures cover every process's batches (a collective: call it on every rank).
        """
        flat = sum_across([float(sums[k]) for sums in self._sums for k in ("loss", "correct", "count")]
                          + [float(self._cost_sum)])
        out: Dict[str, float] = {}
        for k, name in enumerate(self.exits.exit_names):
            loss, correct, count = flat[3 * k:3 * k + 3]
            if count:
                out[f"{name}_loss"] = loss / count
                out[f"{name}_top1"] = 100.0 * correct / count
        if self._gated() and flat[2]:
            out["expected_cost"] = flat[-1] / flat[2]  # of the backbone's MACs, under the soft gates
        self._reset_metrics()
        return out

    def __repr__(self) -> str:
        return f"EarlyExitPolicy({self.name!r}, exits={self.exits.exit_names})"


add_section(Section("early_exits", "early_exit", EARLY_EXITS, order=60, policy=EarlyExitPolicy, build_order=0))
