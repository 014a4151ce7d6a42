"""PruningPolicy: runs a pruner at the epochs (and minibatches) the schedule gives it (Distiller semantics).

Lifecycle, with the scheduler applying every set mask at each minibatch begin (after the policies'
``on_minibatch_begin``) and end (after ``optimizer.step()``, before the policies' ``on_minibatch_end``;
forward-only masks are skipped there)::

    on_epoch_begin          masks of every weight the pruner handles are recomputed and applied
      on_minibatch_begin    with mini_batch_pruning_frequency N: masks recomputed every N minibatches
      before_parameter_optimization   with use_double_copies: the unmasked weights are restored, so the
                            optimizer updates them with gradients computed on the masked weights
      on_minibatch_end      with discard_masks_at_minibatch_end: the masks are dropped
    on_epoch_end            after the last epoch: with keep_mask the masks become permanent (no double
                            copies, masking also after each step); gradient masking is removed

Policy ``args`` (Distiller's names): ``levels`` (replaces a level pruner's levels), ``keep_mask``,
``mini_batch_pruning_frequency``, ``mask_on_forward_only``, ``mask_gradients`` (requires
``mask_on_forward_only``), ``use_double_copies``, ``discard_masks_at_minibatch_end``, ``fold_batchnorm``
(the pruner decides the mask of a Conv2d weight from the weight times ``gamma / sqrt(running_var + eps)`` of
the BatchNorm2d reading its output, found by torch.fx; the mask is applied to the unfolded weight).

The scheduler sets ``starting_epoch``, ``ending_epoch`` (exclusive) and ``frequency`` before the first hook.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch

from ..arguments import ArgumentError, NonNegativeInt, ParamMap, UnitInterval, bind
from ..errors import DistillEEError, ScheduleError
from ..pruning.flow import ModuleFlow, batchnorm_folded
from ..pruning.masks import ParameterMasker
from ..pruning.pruner import Pruner
from ..registry import PRUNERS, Section, add_section
from .base import HookContext, Policy


@dataclass
class PruningArgs:
    """The ``args`` of a pruner's policy entry (Distiller's names)."""

    levels: Optional[ParamMap[UnitInterval]] = None
    keep_mask: bool = False
    mini_batch_pruning_frequency: NonNegativeInt = 0
    mask_on_forward_only: bool = False
    mask_gradients: bool = False
    use_double_copies: bool = False
    discard_masks_at_minibatch_end: bool = False
    fold_batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.mask_gradients and not self.mask_on_forward_only:
            raise ArgumentError("mask_gradients needs mask_on_forward_only: True (masking after the optimizer "
                                "step already keeps masked weights at zero)", ("mask_gradients",))


#: the policy arguments a schedule may give a pruner (in declaration order)
PRUNING_POLICY_ARGS = tuple(PruningArgs.__dataclass_fields__)


class PruningPolicy(Policy):
    """Schedules a pruner: computes the masks of the weights it handles and sets how they are applied."""

    kind = "pruner"
    Args = PruningArgs

    def __init__(self, pruner: Pruner, pruner_args: Union[None, PruningArgs, Mapping[str, Any]] = None,
                 name: str = ""):
        super().__init__(name)
        args = pruner_args if isinstance(pruner_args, PruningArgs) else _pruning_args(pruner_args or {})
        self.pruner = pruner
        self.levels = args.levels
        self.keep_mask = args.keep_mask
        self.mini_batch_pruning_frequency = args.mini_batch_pruning_frequency
        self.mask_on_forward_only = args.mask_on_forward_only
        self.mask_gradients = args.mask_gradients
        self.use_double_copies = args.use_double_copies
        self.discard_masks_at_minibatch_end = args.discard_masks_at_minibatch_end
        self.fold_batchnorm = args.fold_batchnorm
        #: handled Conv2d weight -> the BatchNorm2d folded into it (found once, with fold_batchnorm)
        self._folded_bns: Optional[Dict[str, str]] = None
        self.is_initialized = False
        self.is_last_epoch = False

    @classmethod
    def from_component(cls, component: Any, args: Any, name: str) -> "PruningPolicy":
        """The policy running ``component`` (a Pruner) with its entry's PruningArgs."""
        return cls(component, args, name=name)

    def validate_window(self) -> None:
        """Raise ScheduleError now if the pruner cannot run on the epochs the scheduler gave this policy."""
        check = getattr(self.pruner, "validate_window", None)
        if check is not None and self.starting_epoch is not None:
            check(self.starting_epoch, self.ending_epoch, self.frequency)

    def dry_run(self, model: torch.nn.Module) -> None:
        """Compute the masks of the first due epoch on copies of the pruner and of every weight it handles."""
        pruner = copy.deepcopy(self.pruner)
        if self.levels is not None:
            pruner.levels = self.levels
        meta = {"current_epoch": self.starting_epoch or 0, "starting_epoch": self.starting_epoch,
                "ending_epoch": self.ending_epoch, "frequency": self.frequency, "model": model}
        for name, param in model.named_parameters():
            if pruner.handles(name):
                with torch.no_grad():
                    ranked = self._ranked(model, name, param.detach().clone())
                    pruner.set_param_mask(ranked, name, {name: ParameterMasker(name)}, meta)

    @property
    def changes_masks_in_minibatches(self) -> bool:  # type: ignore[override]
        """True when masks are recomputed or dropped within epochs (minibatch frequency, discarding)."""
        return bool(self.mini_batch_pruning_frequency or self.discard_masks_at_minibatch_end)

    def _handled(self, ctx: HookContext) -> Iterator[Tuple[str, torch.nn.Parameter, ParameterMasker]]:
        for param_name, param in ctx.model.named_parameters():
            if param_name in ctx.masks and self.pruner.handles(param_name):
                yield param_name, param, ctx.masks[param_name]

    def _ranked(self, model: torch.nn.Module, param_name: str, param: torch.Tensor) -> torch.Tensor:
        """The tensor the pruner ranks: ``param``, or with fold_batchnorm its batch-norm-folded value."""
        if not self.fold_batchnorm:
            return param
        if self._folded_bns is None:
            self._folded_bns = self._find_batchnorms(model)
        bn = self._folded_bns.get(param_name)
        if bn is None:
            return param
        return batchnorm_folded(param, dict(model.named_modules())[bn])

    def _find_batchnorms(self, model: torch.nn.Module) -> Dict[str, str]:
        modules = dict(model.named_modules())
        convs = {name: name[: -len(".weight")] for name, _ in model.named_parameters()
                 if self.pruner.handles(name) and name.endswith(".weight")
                 and isinstance(modules.get(name[: -len(".weight")]), torch.nn.Conv2d)}
        if not convs:
            return {}
        try:
            flow = ModuleFlow(model)
            found = {name: flow.batchnorm_after(conv) for name, conv in convs.items()}
        except DistillEEError as err:
            raise ScheduleError(f"fold_batchnorm: {err}") from None
        return {name: bn for name, bn in found.items() if bn is not None}

    def _meta(self, ctx: HookContext) -> Dict[str, Any]:
        return {
            "current_epoch": ctx.epoch,
            "starting_epoch": self.starting_epoch,
            "ending_epoch": self.ending_epoch,
            "frequency": self.frequency,
            "model": ctx.model,
        }

    def _configure(self, masker: ParameterMasker) -> None:
        masker.use_double_copies = self.use_double_copies
        masker.mask_on_forward_only = self.mask_on_forward_only
        masker.mask_gradients = self.mask_gradients

    def on_epoch_begin(self, ctx: HookContext) -> None:
        """Recompute the masks of every handled weight and apply them."""
        self.is_last_epoch = self.is_last(ctx.epoch)
        if self.levels is not None:
            self.pruner.levels = self.levels
        meta = self._meta(ctx)
        for param_name, param, masker in self._handled(ctx):
            if not self.is_initialized:
                self._configure(masker)
            masker.ensure_gradient_hook(param)
            self.pruner.set_param_mask(self._ranked(ctx.model, param_name, param), param_name, ctx.masks, meta)
            # With double copies only the scheduler's forward masking may mask: it keeps the unmasked copy
            # that before_parameter_optimization restores.
            if not masker.use_double_copies:
                masker.apply_mask(param)
        self.is_initialized = True

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """With ``mini_batch_pruning_frequency``, recompute the masks every that many minibatches."""
        freq = self.mini_batch_pruning_frequency
        if not freq or not ctx.minibatch_id:
            return
        global_minibatch = ctx.epoch * (ctx.minibatches_per_epoch or 0) + ctx.minibatch_id
        if global_minibatch % freq != 0:
            return
        # The scheduler applies every mask right after this hook, so setting the masks is enough.
        meta = self._meta(ctx)
        for param_name, param, _ in self._handled(ctx):
            self.pruner.set_param_mask(self._ranked(ctx.model, param_name, param), param_name, ctx.masks, meta)

    def before_parameter_optimization(self, ctx: HookContext) -> None:
        """With double copies, restore the unmasked weights so the optimizer updates them."""
        if not self.use_double_copies:
            return
        for _, param, masker in self._handled(ctx):
            masker.revert_weights(param)

    def on_minibatch_end(self, ctx: HookContext) -> None:
        """With ``discard_masks_at_minibatch_end``, drop the masks of the handled weights."""
        if not self.discard_masks_at_minibatch_end:
            return
        for _, _, masker in self._handled(ctx):
            masker.mask = None

    def on_epoch_end(self, ctx: HookContext) -> None:
        """After the policy's last epoch: make masks permanent (``keep_mask``) and stop gradient masking."""
        if not self.is_last_epoch:
            return
        for _, param, masker in self._handled(ctx):
            if self.keep_mask:
                masker.use_double_copies = False
                masker.mask_on_forward_only = False
                masker.apply_mask(param)
            masker.mask_gradients = False
            masker.remove_gradient_hook()

    def state_dict(self) -> Dict[str, Any]:
        """Progress flags and the pruner's own state."""
        return {
            "is_initialized": self.is_initialized,
            "is_last_epoch": self.is_last_epoch,
            "pruner": self.pruner.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.is_initialized = bool(state.get("is_initialized", False))
        self.is_last_epoch = bool(state.get("is_last_epoch", False))
        self.pruner.load_state_dict(state.get("pruner", {}))

    def __repr__(self) -> str:
        return f"PruningPolicy({self.name!r}, pruner={self.pruner!r})"


def _pruning_args(args: Mapping[str, Any]) -> PruningArgs:
    """PruningArgs from a plain mapping (direct construction); errors name the argument."""
    try:
        return PruningArgs(**bind(PruningArgs, args, owner="the pruning policy"))
    except ArgumentError as err:
        path = ".".join(str(p) for p in err.path)
        raise ScheduleError(f"pruning policy: {err.message}", path=path, valid=err.valid,
                            suggestions=err.suggestions) from None


add_section(Section("pruners", "pruner", PRUNERS, order=10, policy=PruningPolicy))
