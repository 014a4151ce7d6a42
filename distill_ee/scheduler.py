"""CompressionScheduler: maps epochs to policies and calls their hooks from the user's training loop.

The training loop calls, in this order (Distiller's protocol)::

    scheduler.on_epoch_begin(epoch)
    for i, (x, y) in enumerate(loader):
        scheduler.on_minibatch_begin(epoch, i, steps)
        loss = criterion(model(x), y)
        loss = scheduler.before_backward_pass(epoch, i, steps, loss, target=y)
        optimizer.zero_grad(); loss.backward()
        scheduler.before_parameter_optimization(epoch, i, steps)
        optimizer.step()
        scheduler.on_minibatch_end(epoch, i, steps)
    scheduler.on_epoch_end(epoch, metrics={"min": val_loss, "max": val_top1})
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from .distributed import is_distributed, share_masks
from .errors import CheckpointError, ConfigError
from .policies.base import HookContext, LossComponent, Policy, PolicyLoss, Window
from .pruning.masks import MaskDict, ParameterMasker, apply_masks, create_masks


class ScheduledPolicy:
    """A policy with the epochs in which it is due."""

    def __init__(self, policy: Policy, epochs: Optional[List[int]], starting_epoch: int, ending_epoch: int,
                 frequency: Optional[int]):
        self.policy = policy
        self.window = Window(starting_epoch, ending_epoch, frequency, epochs)
        policy.set_window(starting_epoch, ending_epoch, frequency, epochs)

    def is_due(self, epoch: int) -> bool:
        """True when the policy runs in ``epoch``."""
        return self.window.is_due(epoch)



def _epoch(value: Any, what: str) -> int:
    """An epoch number (or frequency) as add_policy takes it: a whole number >= 0 (numpy's too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ConfigError(f"add_policy: {what} takes whole numbers of at least 0, got {value!r}")
    return int(value)


class CompressionScheduler:
    """Runs the scheduled policies at the hooks of a standard training loop and owns the pruning masks.

    It listens to its mask dict: code that replaces parameters (thinning) and holds the masks tells it
    through ``masks.parameters_replaced()``, and it re-reads the model's parameters. ``components`` holds the
    schedule's built components by section and instance name.
    """

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None):
        self.model = model
        self.optimizer = optimizer
        self.scheduled: List[ScheduledPolicy] = []
        self.components: Dict[str, Dict[str, Any]] = {}
        self.zeros_mask_dict: MaskDict = create_masks(model)
        self.zeros_mask_dict.listeners.append(self.refresh_parameters)
        self._params: Dict[str, torch.Tensor] = dict(model.named_parameters())
        self._due_epoch: Optional[int] = None
        self._applied_at = -1  # ParameterMasker.changes when all masks were last applied
        self._due_minibatch: List[Policy] = []
        self._shared_versions: Dict[str, int] = {}  # mask versions last made identical across processes
        #: under torch.distributed, make changed masks rank 0's on every process (False: a scheduler that runs
        #: on one process of the group only)
        self.share_across_processes = True

    # ----------------------------------------------------------------- setup
    def add_policy(self, policy: Policy, epochs: Optional[Iterable[int]] = None,
                   starting_epoch: Optional[int] = None, ending_epoch: Optional[int] = None,
                   frequency: Optional[int] = None) -> None:
        """Schedule ``policy`` on ``epochs`` or on ``range(starting_epoch, ending_epoch, frequency)`` (frequency 1
        by default). One of the two must be given, and not both: Distiller schedules a policy given neither on
        epoch 0 alone, and one given both on its epochs, without a word; here both are a ConfigError."""
        window = {"starting_epoch": starting_epoch, "ending_epoch": ending_epoch, "frequency": frequency}
        given = [k for k, v in window.items() if v is not None]
        if epochs is not None:
            if given:
                raise ConfigError(f"add_policy({policy.name or type(policy).__name__}): give epochs or a "
                                  f"starting_epoch/ending_epoch window, not both ({', '.join(given)} given too)")
            listed = sorted(set(_epoch(e, "epochs") for e in epochs))
            if not listed:
                raise ConfigError(f"add_policy({policy.name or type(policy).__name__}): epochs is empty")
            sp = ScheduledPolicy(policy, listed, listed[0], listed[-1] + 1, None)
        else:
            if starting_epoch is None or ending_epoch is None:
                raise ConfigError(f"add_policy({policy.name or type(policy).__name__}): give epochs=[...] or both "
                                  "starting_epoch and ending_epoch (Distiller would schedule epoch 0 only)")
            start, end = _epoch(starting_epoch, "starting_epoch"), _epoch(ending_epoch, "ending_epoch")
            step = 1 if frequency is None else _epoch(frequency, "frequency")
            if end <= start or step < 1:
                raise ConfigError(f"add_policy({policy.name or type(policy).__name__}): empty window: "
                                  f"range({start}, {end}, {step}) (ending_epoch is exclusive; frequency at least 1)")
            sp = ScheduledPolicy(policy, None, start, end, step)
        self.scheduled.append(sp)
        self._due_epoch = None

    def refresh_parameters(self) -> None:
        """Re-read the model's parameters (after exits were attached or layers were thinned)."""
        self._params = dict(self.model.named_parameters())
        self._applied_at = -1
        for name in self._params:
            self.zeros_mask_dict.setdefault(name, ParameterMasker(name))
        for name in [n for n in self.zeros_mask_dict if n not in self._params]:
            del self.zeros_mask_dict[name]

    def add_component(self, section: str, name: str, component: Any) -> None:
        """Record a built component of the schedule (``components[section][name]``)."""
        self.components.setdefault(section, {})[name] = component

    def component(self, section: str, name: str) -> Any:
        """The built component ``name`` of ``section``."""
        return self.components[section][name]

    @property
    def masks(self) -> MaskDict:
        """The masks by parameter name (Distiller calls this ``zeros_mask_dict``)."""
        return self.zeros_mask_dict

    @property
    def policies(self) -> List[Policy]:
        """All scheduled policies in declaration order."""
        return [sp.policy for sp in self.scheduled]

    def policies_for(self, epoch: int) -> List[Policy]:
        """The policies due in ``epoch``, in declaration order."""
        return [sp.policy for sp in self.scheduled if sp.is_due(epoch)]

    def find(self, kind: str) -> List[Policy]:
        """Scheduled policies of one kind (``pruner``, ``early_exit`` ...)."""
        return [p for p in self.policies if p.kind == kind]

    # ----------------------------------------------------------------- hooks
    def _ctx(self, epoch: int, optimizer: Optional[torch.optim.Optimizer], **kw: Any) -> HookContext:
        return HookContext(epoch=epoch, model=self.model, optimizer=optimizer or self.optimizer,
                           masks=self.zeros_mask_dict, scheduler=self, **kw)

    def on_epoch_begin(self, epoch: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Start of an epoch: due policies may (re)compute masks, attach behaviour, change the LR."""
        ctx = self._ctx(epoch, optimizer)
        for policy in self.policies_for(epoch):
            policy.on_epoch_begin(ctx)
        self._share_masks()
        self._applied_at = -1  # a policy may have changed weights or masks

    def _due_now(self, epoch: int) -> List[Policy]:
        """Due policies that take minibatch hooks, cached per epoch."""
        if self._due_epoch != epoch:
            self._due_epoch = epoch
            self._due_minibatch = [p for p in self.policies_for(epoch) if p.needs_minibatch_hooks]
        return self._due_minibatch

    def _minibatch_hook(self, hook: str, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                        optimizer: Optional[torch.optim.Optimizer]) -> List[Policy]:
        """Call the minibatch hook named ``hook`` of every due policy; returns those policies."""
        due = self._due_now(epoch)
        if due:
            ctx = self._ctx(epoch, optimizer, minibatch_id=minibatch_id,
                            minibatches_per_epoch=minibatches_per_epoch)
            for policy in due:
                getattr(policy, hook)(ctx)
        return due

    def on_minibatch_begin(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                           optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Before the forward pass: due policies run, then every mask is applied."""
        due = self._minibatch_hook("on_minibatch_begin", epoch, minibatch_id, minibatches_per_epoch, optimizer)
        if any(policy.changes_masks_in_minibatches for policy in due):
            self._share_masks()
        # Masks applied after the last optimizer step still hold unless a mask changed since then; only
        # forward-only masks (lifted after each step) must be applied again.
        unchanged = self._applied_at == ParameterMasker.changes
        apply_masks(self._params, self.zeros_mask_dict, is_forward=True, forward_only=unchanged)
        self._applied_at = ParameterMasker.changes

    def before_backward_pass(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                             loss: torch.Tensor, optimizer: Optional[torch.optim.Optimizer] = None,
                             return_loss_components: bool = False, *,
                             target: Optional[torch.Tensor] = None) -> Union[torch.Tensor, PolicyLoss]:
        """Let due policies add terms to the loss (exit losses, regularizers); returns the new loss."""
        overall = loss
        components: List[LossComponent] = []
        for policy in self._due_now(epoch):
            ctx = self._ctx(epoch, optimizer, minibatch_id=minibatch_id,
                            minibatches_per_epoch=minibatches_per_epoch, loss=overall, task_loss=loss,
                            target=target)
            result = policy.before_backward_pass(ctx)
            if result is not None:
                overall = result.overall_loss
                components.extend(result.loss_components)
        if return_loss_components:
            return PolicyLoss(overall, components)
        return overall

    def before_parameter_optimization(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                                      optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """After backward, before ``optimizer.step()``."""
        self._minibatch_hook("before_parameter_optimization", epoch, minibatch_id, minibatches_per_epoch, optimizer)

    def on_minibatch_end(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                         optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """After ``optimizer.step()``: masks are re-applied (momentum and decay move pruned weights)."""
        apply_masks(self._params, self.zeros_mask_dict, is_forward=False)
        self._applied_at = ParameterMasker.changes
        self._minibatch_hook("on_minibatch_end", epoch, minibatch_id, minibatches_per_epoch, optimizer)

    def on_epoch_end(self, epoch: int, optimizer: Optional[torch.optim.Optimizer] = None,
                     metrics: Optional[Dict[str, float]] = None) -> None:
        """End of an epoch; ``metrics`` (e.g. ``{'min': val_loss, 'max': val_top1}``) reach LR policies."""
        ctx = self._ctx(epoch, optimizer, metrics=metrics or {})
        for policy in self.policies_for(epoch):
            policy.on_epoch_end(ctx)
        self._share_masks()

    def _share_masks(self) -> None:
        """Under torch.distributed: every mask a policy changed on any process since the last call becomes rank
        0's, with the weights it masks (random and data-dependent masks would otherwise differ)."""
        if self.share_across_processes and is_distributed():
            share_masks(self.zeros_mask_dict, self._params, self._shared_versions)

    def pending_outputs(self) -> List[torch.Tensor]:
        """What the last forward pass computed for the policies' loss terms outside the model's output."""
        return [t for policy in self.policies for t in policy.pending_outputs()]

    def apply_mask(self, is_forward: bool = True) -> None:
        """Apply every set mask to its parameter now."""
        apply_masks(self._params, self.zeros_mask_dict, is_forward=is_forward)

    # ----------------------------------------------------------------- state
    def _policy_keys(self) -> List[str]:
        return [f"{i}:{p.kind}:{p.name}" for i, p in enumerate(self.policies)]

    def state_dict(self) -> Dict[str, Any]:
        """Masks and every policy's state, keyed by position, kind and instance name."""
        return {
            "masks": {n: m.state_dict() for n, m in self.zeros_mask_dict.items() if m.mask is not None},
            "policies": {k: p.state_dict() for k, p in zip(self._policy_keys(), self.policies)},
        }

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        """Restore masks and policy states; a different set of policies is a CheckpointError when strict."""
        saved = state.get("policies", {})
        keys = self._policy_keys()
        if strict and set(saved) != set(keys):
            raise CheckpointError(
                "the checkpoint's compression schedule does not match this one: "
                f"checkpoint has {sorted(saved) or 'no policies'}, schedule has {keys or 'no policies'}")
        for key, policy in zip(keys, self.policies):
            if key in saved:
                policy.load_state_dict(saved[key])
        self.refresh_parameters()
        for name, mstate in state.get("masks", {}).items():
            if name not in self.zeros_mask_dict:
                if strict:
                    raise CheckpointError(f"the checkpoint has a mask for {name!r}, which this model lacks")
                continue
            self.zeros_mask_dict[name].load_state_dict(mstate)
        for name, masker in self.zeros_mask_dict.items():
            # double-copy masks keep their unmasked weights; they are masked at the next forward pass
            if masker.mask is not None and not masker.use_double_copies:
                masker.apply_mask(self._params[name])
