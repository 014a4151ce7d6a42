"""Thinning as a scheduled extension: Distiller's StructureRemover (and its names FilterRemover, ChannelRemover).

Schedule::

    extensions:
      net_thinner:
        class: FilterRemover
        thinning_func_str: remove_filters      # or remove_channels
        arch: resnet20_cifar                   # accepted for Distiller compatibility, not needed
        dataset: cifar10
    policies:
      - extension: {instance_name: net_thinner}
        epochs: [1]

Lifecycle in a due epoch, as in Distiller::

    on_minibatch_begin   first minibatch: thin once (the pruners' on_epoch_begin has set and applied the
                         masks), so the rest of the epoch trains the thinned model
    on_epoch_end         thin now if no minibatch hook ran in the epoch; re-arm for the next due epoch

Each thinning appends its recipe to the model's ``thinning_recipes`` and to this policy's state; the zero
structures it had to keep, with the reason, go to ``kept`` (the sample app's summary lists them).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..errors import ScheduleError
from ..policies.base import HookContext, Policy
from ..registry import EXTENSIONS, suggest
from .graph import build_dependency_graph
from .recipe import Recipe, is_empty
from .remove import Kept, remove_channels, remove_filters

THINNING_FUNCTIONS: Dict[str, Callable[..., Recipe]] = {
    "remove_filters": remove_filters,
    "remove_channels": remove_channels,
}


@EXTENSIONS.register()
class StructureRemover(Policy):
    """Physically removes zero filters or channels from the model in its due epochs."""

    kind = "extension"
    needs_minibatch_hooks = True

    def __init__(self, name: str, thinning_func_str: str, arch: Optional[str] = None,
                 dataset: Optional[str] = None):
        super().__init__(name)
        if thinning_func_str not in THINNING_FUNCTIONS:
            raise ScheduleError(f"unknown thinning function {thinning_func_str!r}", path="thinning_func_str",
                                valid=sorted(THINNING_FUNCTIONS),
                                suggestions=suggest(str(thinning_func_str), THINNING_FUNCTIONS))
        self.thinning_func_str = thinning_func_str
        self.arch = arch
        self.dataset = dataset
        self.recipes: List[Recipe] = []
        self.kept: List[Kept] = []
        self.done = False

    def thin(self, ctx: HookContext) -> Recipe:
        """Thin ``ctx.model`` now (masks and optimizer state follow); returns the recipe applied."""
        kept: List[Kept] = []
        recipe = THINNING_FUNCTIONS[self.thinning_func_str](ctx.model, ctx.masks, ctx.optimizer, kept=kept)
        self.kept = kept
        self.done = True
        if not is_empty(recipe):
            self.recipes.append(recipe)
        return recipe

    @property
    def removes(self) -> str:
        """What this remover removes: "filters" or "channels"."""
        return self.thinning_func_str.partition("_")[2]

    def dry_run(self, model: Any) -> None:
        """Build the model's channel dependency graph (what thinning needs): an untraceable model fails now."""
        build_dependency_graph(model)

    def on_minibatch_begin(self, ctx: HookContext) -> None:
        """Thin once, at the first minibatch of a due epoch."""
        if not self.done:
            self.thin(ctx)

    def on_epoch_end(self, ctx: HookContext) -> None:
        """Thin if no minibatch of the epoch did, then re-arm for the next due epoch."""
        if not self.done:
            self.thin(ctx)
        self.done = False

    def state_dict(self) -> Dict[str, Any]:
        """The recipes applied so far (tensors and plain values)."""
        return {"thinning_func_str": self.thinning_func_str, "recipes": list(self.recipes), "done": self.done}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the recipes; the model itself is thinned by ``apply_thinning_recipes`` before loading."""
        self.recipes = list(state.get("recipes", []))
        self.done = bool(state.get("done", False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.thinning_func_str})"


@EXTENSIONS.register()
class FilterRemover(StructureRemover):
    """Distiller's name for a StructureRemover, usually with ``thinning_func_str: remove_filters``."""

    def __init__(self, name: str, thinning_func_str: str = "remove_filters", arch: Optional[str] = None,
                 dataset: Optional[str] = None):
        super().__init__(name, thinning_func_str, arch, dataset)


@EXTENSIONS.register()
class ChannelRemover(StructureRemover):
    """Distiller's name for a StructureRemover, usually with ``thinning_func_str: remove_channels``."""

    def __init__(self, name: str, thinning_func_str: str = "remove_channels", arch: Optional[str] = None,
                 dataset: Optional[str] = None):
        super().__init__(name, thinning_func_str, arch, dataset)
