"""Policy base class: the hook protocol every scheduled policy implements, one signature for all hooks.

Lifecycle of a policy inside a training run, as the CompressionScheduler drives it::

    on_epoch_begin(ctx)                 # once per epoch in which the policy is due
      on_minibatch_begin(ctx)           # every minibatch of such an epoch
      before_backward_pass(ctx)         # may return a PolicyLoss that replaces the loss
      before_parameter_optimization(ctx)
      on_minibatch_end(ctx)
    on_epoch_end(ctx)                   # ctx.metrics holds the validation metrics

Each hook has a no-op default; a policy overrides what it needs and owns its state_dict. The scheduler gives
every policy its window (``set_window``) before the first hook: ``starting_epoch``, ``ending_epoch``
(exclusive), ``frequency`` (None for an explicit ``epochs:`` list) and the due epochs; ``progress(epoch)``,
``last_due_epoch`` and ``is_last(epoch)`` are computed from it, once, here.

A policy that schedules a component of a schedule section (a pruner, a regularizer ...) implements
``from_component(component, args, name)``; ``Args`` is the dataclass of the ``args:`` a policy entry may give,
declared with the same annotations as component arguments (``distill_ee.arguments``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..registry import EXTENSIONS, QUANTIZERS, Section, add_section


@dataclass
class LossComponent:
    """A named term that a policy added to the training loss."""

    name: str
    value: torch.Tensor


@dataclass
class PolicyLoss:
    """The loss after a policy changed it, and the named components it added."""

    overall_loss: torch.Tensor
    loss_components: List[LossComponent] = field(default_factory=list)


@dataclass
class HookContext:
    """Everything a hook may read; fields a hook does not receive are None."""

    epoch: int
    model: nn.Module
    optimizer: Optional[torch.optim.Optimizer] = None
    masks: Dict[str, Any] = field(default_factory=dict)
    minibatch_id: Optional[int] = None
    minibatches_per_epoch: Optional[int] = None
    loss: Optional[torch.Tensor] = None
    #: the loss the training loop passed, before any policy added to it
    task_loss: Optional[torch.Tensor] = None
    target: Optional[torch.Tensor] = None
    metrics: Optional[Dict[str, float]] = None
    #: the CompressionScheduler calling the hook (None when a policy is driven by hand)
    scheduler: Any = None


class Policy:
    """A scheduled piece of compression behaviour; subclasses override the hooks they need."""

    #: the schedule section a policy of this class comes from (``pruner``, ``lr_scheduler`` ...)
    kind: str = "policy"
    #: True when the policy must see every minibatch of an epoch in which it is due
    needs_minibatch_hooks: bool = True
    #: dataclass of the ``args`` a schedule's policy entry may give (None: no args)
    Args: ClassVar[Optional[type]] = None
    #: False when two policy entries may not schedule the same component in a common epoch
    may_overlap: ClassVar[bool] = True
    #: False when the policy's minibatch hooks never set a mask: under torch.distributed the scheduler then
    #: skips making masks agree across processes after them (a small all-reduce per step)
    changes_masks_in_minibatches: bool = True

    def __init__(self, name: str = ""):
        self.name = name
        self.starting_epoch: Optional[int] = None
        self.ending_epoch: Optional[int] = None
        self.frequency: Optional[int] = None
        self._listed: Optional[List[int]] = None

    @classmethod
    def from_component(cls, component: Any, args: Any, name: str) -> "Policy":
        """The policy scheduling ``component`` of a schedule section, with its entry's ``args`` (an ``Args``)."""
        raise NotImplementedError(f"{cls.__name__} does not schedule components")

    # ----------------------------------------------------------------- the window
    def set_window(self, starting_epoch: int, ending_epoch: int, frequency: Optional[int],
                   listed: Optional[Sequence[int]] = None) -> None:
        """The epochs the schedule gives this policy: ``range(starting_epoch, ending_epoch, frequency)``, or the
        ``listed`` epochs (frequency None)."""
        self.starting_epoch, self.ending_epoch, self.frequency = starting_epoch, ending_epoch, frequency
        self._listed = sorted(set(listed)) if listed is not None else None

    @property
    def window(self) -> "Window":
        """The policy's window as set by the scheduler."""
        return Window(self.starting_epoch, self.ending_epoch, self.frequency, self._listed)

    def is_due(self, epoch: int) -> bool:
        """True when the policy runs in ``epoch``."""
        return self.window.is_due(epoch)

    @property
    def due_epochs(self) -> List[int]:
        """Every epoch in which the policy runs, in order (empty without a window)."""
        return self.window.due_epochs()

    @property
    def last_due_epoch(self) -> Optional[int]:
        """The last epoch in which the policy runs; None without a window."""
        return self.window.last_due_epoch

    def is_last(self, epoch: int) -> bool:
        """True in the policy's last due epoch."""
        return epoch == self.last_due_epoch

    def progress(self, epoch: int) -> float:
        """Position of ``epoch`` in the window: 0 at the first due epoch, 1 at the last (and after); 0 for a
        policy without a window."""
        return self.window.progress(epoch)

    def validate_window(self) -> None:
        """Raise ScheduleError (path relative to the policy entry) if the policy cannot run in its window."""

    def dry_run(self, model: nn.Module) -> None:
        """Do, on copies, what the policy will do to ``model`` (compute masks, step the LR, trace for thinning)
        and raise what would fail there: the schedule builder calls it once, so that a component that does
        not fit the model fails when the schedule loads, not in some later epoch. Never changes ``model``."""

    def trained_parameters(self) -> List[nn.Parameter]:
        """Attachment parameters this policy's training steps reach now (an exit policy's branches in its due
        epochs); under DistributedDataParallel the parameters of kinds trained only by policies that no policy
        reaches now are left out of what DDP synchronises (``distill_ee.attachment.idle_parameters``)."""
        return []

    def pending_outputs(self) -> List[torch.Tensor]:
        """Tensors the last forward pass computed for this policy's loss term outside the model's output (exit
        logits); DistributedDataParallel must see them to know which parameters the loss will reach."""
        return []

    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Called at the start of every epoch in which the policy is due."""

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """Called before the forward pass of each minibatch of a due epoch."""

    def before_backward_pass(self, ctx: HookContext) -> Optional[PolicyLoss]:
        """Called after the loss is computed; may return a PolicyLoss replacing ``ctx.loss``."""
        return None

    def before_parameter_optimization(self, ctx: HookContext) -> None:
        """Called after backward and before ``optimizer.step()``."""

    def on_minibatch_end(self, ctx: HookContext) -> None:
        """Called after ``optimizer.step()``."""

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Called at the end of a due epoch; ``ctx.metrics`` carries validation metrics."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume this policy exactly."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


#: sections whose components are policies themselves (no ``args``)
add_section(Section("quantizers", "quantizer", QUANTIZERS, order=30))
add_section(Section("extensions", "extension", EXTENSIONS, order=50))


@dataclass(frozen=True)
class Window:
    """The epochs a policy runs in: ``range(starting_epoch, ending_epoch, frequency)`` or a ``listed`` set."""

    starting_epoch: Optional[int]
    ending_epoch: Optional[int]
    frequency: Optional[int] = 1
    listed: Optional[Sequence[int]] = None

    def is_due(self, epoch: int) -> bool:
        """True when ``epoch`` is in the window."""
        if self.listed is not None:
            return epoch in self.listed
        if self.starting_epoch is None or self.ending_epoch is None:
            return False
        return self.starting_epoch <= epoch < self.ending_epoch and \
            (epoch - self.starting_epoch) % (self.frequency or 1) == 0

    def due_epochs(self) -> List[int]:
        """Every epoch of the window, in order."""
        if self.listed is not None:
            return list(self.listed)
        if self.starting_epoch is None or self.ending_epoch is None:
            return []
        return list(range(self.starting_epoch, self.ending_epoch, self.frequency or 1))

    @property
    def last_due_epoch(self) -> Optional[int]:
        """The window's last epoch; None without one."""
        if self.listed is not None:
            return max(self.listed) if self.listed else None
        return last_due_epoch(self.starting_epoch, self.ending_epoch, self.frequency)

    def progress(self, epoch: int) -> float:
        """0 at the first epoch of the window, 1 at the last (and after); 0 without a window."""
        last = self.last_due_epoch
        if self.starting_epoch is None or last is None:
            return 0.0
        if last <= self.starting_epoch:
            return 1.0
        return min(1.0, max(0.0, (epoch - self.starting_epoch) / (last - self.starting_epoch)))

    def overlaps(self, other: "Window") -> bool:
        """True when the two windows share an epoch."""
        if self.listed is not None or other.listed is not None:
            few, many = (self, other) if self.listed is not None else (other, self)
            return any(many.is_due(e) for e in few.due_epochs())
        low = max(self.starting_epoch or 0, other.starting_epoch or 0)
        high = min(self.ending_epoch or 0, other.ending_epoch or 0)
        return any(self.is_due(e) and other.is_due(e) for e in range(low, high))


def last_due_epoch(starting_epoch: Optional[int], ending_epoch: Optional[int],
                   frequency: Optional[int]) -> Optional[int]:
    """The last epoch of ``range(starting_epoch, ending_epoch, frequency)``; None when it never ends."""
    if ending_epoch is None:
        return None
    if not frequency or starting_epoch is None:
        return ending_epoch - 1
    return starting_epoch + ((ending_epoch - 1 - starting_epoch) // frequency) * frequency
