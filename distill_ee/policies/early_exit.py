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

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..distributed import sum_across
from ..early_exit.calibrate import exit_costs
from ..early_exit.exits import EarlyExits
from ..early_exit.gates import soft_conditional_loss
from ..early_exit.hooks import ExitHooks
from ..distillation import distillation_loss
from ..dynamic import static_compute
from ..errors import CheckpointError, DistillEEError
from ..modules import eval_mode, unwrap
from ..registry import EARLY_EXITS, Section, add_section
from .base import HookContext, LossComponent, Policy, PolicyLoss
from .freeze import BackboneFreeze


@dataclass
class EarlyExitArgs:
    """The ``args`` of an early-exit policy entry."""

    #: two-stage exit training: the backbone frozen (weights and batch-norm statistics), only the exits train
    freeze_backbone: bool = False


class EarlyExitPolicy(Policy):
    """The joint training of a model's exit branches over the policy's window."""

    kind = "early_exit"
    Args = EarlyExitArgs
    needs_minibatch_hooks = True
    changes_masks_in_minibatches = False
    may_overlap = False  # two joint losses of the same exits in one step would each pop the same logits

    def __init__(self, exits: EarlyExits, name: str = "", freeze_backbone: bool = False):
        super().__init__(name or exits.name)
        self.exits = exits
        self.freeze_backbone = freeze_backbone
        self._freeze = BackboneFreeze()
        self._distill: Tuple[bool, Any] = (False, None)  # (read, the instance's distillation block or None)
        self._teacher: Optional[torch.nn.Module] = None  # the frozen snapshot (distillation teacher: frozen)
        self._teacher_state: Optional[Dict[str, Any]] = None  # a restored snapshot's weights, until it is rebuilt
        self._input: Optional[torch.Tensor] = None
        self._input_hook: Optional[Any] = None
        self.hooks = ExitHooks(exits.model, gradient_equilibrium=exits.spec.gradient_equilibrium)
        self._weights: Optional[Tuple[int, Tuple[List[float], float]]] = None
        self._gate_weights: Optional[Tuple[int, Tuple[float, float]]] = None
        self._costs: List[float] = []  # each output's cost over the backbone's MACs (gates only)
        self._sums: List[Dict[str, torch.Tensor]] = []
        self._cost_sum = torch.zeros(())
        self._reset_metrics()

    @classmethod
    def from_component(cls, component: Any, args: Any, name: str) -> "EarlyExitPolicy":
        """The policy training ``component`` (an EarlyExits), with the backbone frozen when ``args`` say so."""
        return cls(component, name=name, freeze_backbone=bool(args is not None and args.freeze_backbone))

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
        return self.exits.exit_set.trained_with_network

    @property
    def trains_branches(self) -> bool:
        """True from a due epoch's begin to its end: training forward passes run every branch."""
        return self.hooks.enabled

    def trained_parameters(self) -> List[torch.nn.Parameter]:
        """What the joint loss trains while the policy runs: every branch, and the gates of gated exits (not the
        deciders of a learned policy, which are trained after the network); nothing outside its due epochs."""
        if not self.trains_branches:
            return []
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
        if self.freeze_backbone:
            self._freeze.freeze(ctx.model)
        self._distill = (False, None)
        distill = self._distillation()
        if distill is not None and distill.teacher == "frozen":
            self._start_frozen_teacher(unwrap(ctx.model))
        if self._gated():
            costs = exit_costs(self.exits.multi_exit_model(), unwrap(self.exits.model), ctx.masks)
            self._costs = [m / costs.full_macs for m in costs.macs_per_exit]

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """Make sure the hooks are on (also when the epoch hook was skipped); a frozen backbone runs in eval mode."""
        self.hooks.enable()
        if self.freeze_backbone:
            self._freeze.freeze(ctx.model)
            self._freeze.step_begin(ctx.model)

    def on_minibatch_end(self, ctx: HookContext) -> None:
        """A frozen backbone's modules get the training loop's mode back."""
        self._freeze.step_end()

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
        distill = self._distillation()
        final = self.hooks.pop_final() if gate_weights is not None or (distill and distill.teacher == "final") \
            else None
        if gate_weights is not None:
            overall = self._gate_loss(logits, ctx.target, overall, gate_weights, components, final)
        if distill is not None:
            teacher = final if distill.teacher == "final" else self._frozen_teacher_logits()
            term = sum(distillation_loss(l, teacher, distill.temperature) for l in logits)
            term = term * distill.weight.at(self.progress(ctx.epoch))
            components.append(LossComponent("self_distillation", term))
            overall = overall + term
        return PolicyLoss(overall, components)

    def _distillation(self) -> Any:
        """The instance's ``distillation`` block (None without one), read once per epoch."""
        if not self._distill[0]:
            self._distill = (True, self.exits.spec.distillation)
        return self._distill[1]

    def _frozen_teacher_logits(self) -> torch.Tensor:
        """The frozen snapshot's final logits on this step's input (every routed block running)."""
        if self._teacher is None or self._input is None:
            raise DistillEEError("self-distillation from a frozen teacher needs on_epoch_begin and a training "
                                 "forward pass before the loss")
        with eval_mode(self._teacher), torch.no_grad(), static_compute(self._teacher):
            out = self._teacher(self._input)
        self._input = None
        return out

    def _gate_loss(self, logits: List[torch.Tensor], target: torch.Tensor, overall: torch.Tensor,
                   weights: Tuple[float, float], components: List[LossComponent],
                   final: torch.Tensor) -> torch.Tensor:
        """Add the soft-conditional cross-entropy and lambda times the expected cost (Scardapane et al.)."""
        if not self._costs:
            raise DistillEEError("gated exits need on_epoch_begin before the first step (it prices each exit)")
        deciders = self.exits.exit_set.learned_deciders
        # A gate reads its exit's logits without steering them: through the gate, the cost term would teach a
        # branch to look confident (and its gate to open) whether it is right or not.
        gates = [deciders[n](l.detach()) for n, l in zip(self.exits.exit_names, logits)]
        ce, cost = soft_conditional_loss([*logits, final], gates, self._costs, target)
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
        """Remove the hooks until the next due epoch; unfreeze the backbone."""
        self.hooks.disable()
        self._freeze.release()
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None
        self._input = None

    def _start_frozen_teacher(self, model: torch.nn.Module) -> None:
        """Snapshot the network the first time (or rebuild a restored snapshot) and watch the step's input."""
        if self._teacher is None:
            self._teacher = frozen_copy(model)
            if self._teacher_state is not None:
                try:
                    self._teacher.load_state_dict(self._teacher_state)
                except (RuntimeError, KeyError) as err:
                    raise CheckpointError(f"the saved self-distillation teacher does not fit the model: "
                                          f"{str(err).splitlines()[0]}") from None
                self._teacher_state = None
        if self._input_hook is None:
            self._input_hook = model.register_forward_pre_hook(self._watch_input)

    def _watch_input(self, module: torch.nn.Module, args: Any) -> None:
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
            self._input = args[0]

    def state_dict(self) -> Dict[str, Any]:
        """The frozen teacher's weights, when self-distillation uses one (so a resumed run has the same teacher)."""
        if self._teacher is not None:
            return {"teacher": self._teacher.state_dict()}
        return {"teacher": self._teacher_state} if self._teacher_state is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (the snapshot is rebuilt at the next due epoch)."""
        if state.get("teacher") is not None:
            self._teacher, self._teacher_state = None, dict(state["teacher"])

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


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` without its forward hooks (exit hooks, routing, other policies' watchers), its
    parameters frozen, in eval mode."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    for m, _, _ in saved:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        twin = copy.deepcopy(model)
    finally:
        for m, hooks, pre in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin.eval()


add_section(Section("early_exits", "early_exit", EARLY_EXITS, order=60, policy=EarlyExitPolicy, build_order=0))
