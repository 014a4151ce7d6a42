"""Thinning recipes: which indices of which tensors a thinning kept, as plain data that checkpoints can hold.

A recipe is a dict of plain Python values and tensors (it loads with ``torch.load(weights_only=True)``)::

    {"modules": {"layer1.0.conv1": {"out_channels": 8}, ...},          # module attributes to set
     "tensors": {"layer1.0.conv1.weight": [[0, 16, tensor([0, 3, ...])]], # [dim, size before, kept indices]
                 "layer1.0.bn1.running_mean": [[0, 16, tensor([...])]], ...}}

Applying a recipe replaces each sliced parameter by a new, smaller Parameter (with its gradient), swaps it
into the optimizer's parameter groups with its state sliced (momentum buffers and the like), slices its
pruning mask, slices the module buffers and sets the module attributes; the owners of the masks (a
CompressionScheduler) are told that parameters were replaced. Every recipe applied to a model is recorded
as a structure step (``{"kind": "thinning", "recipe": ...}``, see ``distill_ee.structure``), so a thinned
checkpoint loads by replaying the steps on a fresh model.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from ..pruning.masks import ParameterMasker, notify_parameters_replaced
from ..structure import STEP_KINDS, ReplayContext, Step, StepKind, record_step, structure_steps

Recipe = Dict[str, Dict[str, Any]]
#: the kind of the structure step that thins a model
THINNING_STEP = "thinning"
#: bounds of a recipe read from a checkpoint
MAX_TENSORS = 100_000
MAX_SIZE = 1 << 31


def empty_recipe() -> Recipe:
    """A recipe that changes nothing."""
    return {"modules": {}, "tensors": {}}


def is_empty(recipe: Recipe) -> bool:
    """True when ``recipe`` slices no tensor."""
    return not recipe["tensors"]


def set_attribute(recipe: Recipe, module: str, attr: str, value: int) -> None:
    """Record that ``module.attr`` becomes ``value``."""
    recipe["modules"].setdefault(module, {})[attr] = int(value)


def select(recipe: Recipe, tensor: str, dim: int, size: int, keep: torch.Tensor) -> None:
    """Record that tensor ``tensor`` (a parameter or buffer name) keeps indices ``keep`` of ``dim``."""
    recipe["tensors"].setdefault(tensor, []).append([int(dim), int(size), keep.detach().to("cpu", torch.long)])


def thinning_recipes(model: nn.Module) -> List[Recipe]:
    """The recipes applied to ``model`` so far, oldest first (from its structure steps)."""
    return [step["recipe"] for step in structure_steps(model) if step.get("kind") == THINNING_STEP]


def record_recipe(model: nn.Module, recipe: Recipe) -> None:
    """Record ``recipe`` as the model's newest structure step."""
    record_step(model, {"kind": THINNING_STEP, "recipe": recipe})


# --------------------------------------------------------------------------- applying
@torch.no_grad()
def apply_recipe(model: nn.Module, recipe: Recipe, masks: Optional[Mapping[str, ParameterMasker]] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None) -> bool:
    """Slice every tensor the recipe names and set the module attributes; masks and optimizer state follow.

    Tensors already thinned as the recipe says are left alone; returns False when nothing changed.
    """
    check_recipe(model, recipe)
    modules = dict(model.named_modules())
    changed = False
    for name, selections in recipe["tensors"].items():
        module_name, _, attr = name.rpartition(".")
        for dim, size, keep in selections:
            changed |= _select_tensor(modules[module_name], attr, name, int(dim), int(size), keep, masks,
                                      optimizer)
    for module_name, attrs in recipe["modules"].items():
        for attr, value in attrs.items():
            setattr(modules[module_name], attr, value)
    return changed


def apply_thinning_recipes(model: nn.Module, recipes: Sequence[Recipe],
                           optimizer: Optional[torch.optim.Optimizer] = None,
                           masks: Optional[Mapping[str, ParameterMasker]] = None) -> None:
    """Thin a freshly built model the way a saved one was, so that the saved ``state_dict`` fits it.

    Call it before ``model.load_state_dict``; pass the optimizer (and the scheduler's masks) already built on
    the fresh model, so they hold the new parameters. Raises CheckpointError when a recipe does not fit.
    """
    if not isinstance(recipes, (list, tuple)):
        raise CheckpointError(f"thinning recipes must be a list, got {type(recipes).__name__}")
    for i, recipe in enumerate(recipes):
        try:
            changed = apply_recipe(model, recipe, masks, optimizer)
        except CheckpointError as exc:
            raise CheckpointError(f"thinning recipe {i + 1} of {len(recipes)}: {exc}") from None
        if changed:
            record_recipe(model, recipe)
    notify_parameters_replaced(masks)


def check_recipe_fields(recipe: Any) -> None:
    """Raise CheckpointError unless ``recipe`` has a recipe's types: ``modules`` maps module names to integer
    attributes, ``tensors`` maps tensor names to ``[dim, size, kept indices]`` selections."""
    if not isinstance(recipe, Mapping) or set(recipe) != {"modules", "tensors"}:
        raise CheckpointError("a thinning recipe is a mapping with 'modules' and 'tensors'")
    modules, tensors = recipe["modules"], recipe["tensors"]
    if not isinstance(modules, Mapping) or not isinstance(tensors, Mapping) or len(tensors) > MAX_TENSORS:
        raise CheckpointError(f"a thinning recipe's 'modules' and 'tensors' are mappings (at most {MAX_TENSORS:,} "
                              "tensors)")
    for name, attrs in modules.items():
        if not isinstance(name, str) or not isinstance(attrs, Mapping) or not all(
                isinstance(k, str) and _is_size(v) for k, v in attrs.items()):
            raise CheckpointError(f"the recipe's module {name!r} must map attributes to sizes, got {attrs!r}"[:300])
    for name, selections in tensors.items():
        if not isinstance(name, str) or not isinstance(selections, (list, tuple)) or not all(
                _is_selection(s) for s in selections):
            raise CheckpointError(f"the recipe's selections of {name!r} must be [dimension, size, kept indices] "
                                  "entries, the indices a 1-D integer tensor")


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE


def _is_selection(entry: Any) -> bool:
    return isinstance(entry, (list, tuple)) and len(entry) == 3 and _is_size(entry[0]) and _is_size(entry[1]) \
        and isinstance(entry[2], torch.Tensor) and entry[2].dim() == 1 and not entry[2].is_floating_point() \
        and entry[2].dtype != torch.bool


def check_recipe(model: nn.Module, recipe: Any) -> None:
    """Raise CheckpointError unless ``recipe`` is well formed and fits ``model``'s current shapes."""
    check_recipe_fields(recipe)
    modules = dict(model.named_modules())
    for module_name in recipe["modules"]:
        if module_name not in modules:
            raise CheckpointError(f"the recipe names module {module_name!r}, which the model lacks")
    for name, selections in recipe["tensors"].items():
        module_name, _, attr = name.rpartition(".")
        tensor = getattr(modules.get(module_name), attr, None) if module_name in modules else None
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"the recipe names tensor {name!r}, which the model lacks")
        shape = list(tensor.shape)
        for dim, size, keep in selections:
            _check_selection(name, shape, int(dim), int(size), keep)
            shape[int(dim)] = keep.numel()


def _check_selection(name: str, shape: List[int], dim: int, size: int, keep: Any) -> None:
    if not isinstance(keep, torch.Tensor) or keep.dim() != 1 or not 0 <= dim < len(shape):
        raise CheckpointError(f"malformed recipe entry for {name!r}")
    if shape[dim] not in (size, keep.numel()):
        raise CheckpointError(f"{name!r} has {shape[dim]} entries in dimension {dim}, but the recipe thins it "
                              f"from {size} to {keep.numel()}")
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= size):
        raise CheckpointError(f"the recipe keeps indices of {name!r} outside 0..{size - 1}")


def _select_tensor(module: nn.Module, attr: str, name: str, dim: int, size: int, keep: torch.Tensor,
                   masks: Optional[Mapping[str, ParameterMasker]], optimizer: Optional[torch.optim.Optimizer]) -> bool:
    tensor = getattr(module, attr)
    if tensor.size(dim) != size or size == keep.numel():  # already thinned, or nothing to remove
        return False
    keep = keep.to(tensor.device)
    if not isinstance(tensor, nn.Parameter):
        setattr(module, attr, tensor.index_select(dim, keep))
        return True
    new = _select_parameter(module, attr, tensor, dim, keep)
    if optimizer is not None:
        _replace_in_optimizer(optimizer, tensor, new, dim, keep)
    masker = masks.get(name) if masks is not None else None
    if masker is not None:
        _select_masker(masker, new, dim, size, keep)
    return True


def _select_parameter(module: nn.Module, attr: str, param: nn.Parameter, dim: int,
                      keep: torch.Tensor) -> nn.Parameter:
    """A new, smaller Parameter (with its gradient) in place of ``param``.

    A new object, not ``param.data`` resized: autograd nodes still alive from the last step keep the old
    shape of ``param`` and would reject its new gradients.
    """
    new = nn.Parameter(param.detach().index_select(dim, keep).clone(), requires_grad=param.requires_grad)
    if param.grad is not None:
        new.grad = param.grad.index_select(dim, keep)
    setattr(module, attr, new)
    return new


def _replace_in_optimizer(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, dim: int,
                          keep: torch.Tensor) -> None:
    """Swap ``old`` for ``new`` in the parameter groups; its state (momentum buffers ...) is sliced likewise."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    if old in optimizer.state:
        state = optimizer.state.pop(old)
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor) and value.shape == old.shape:
                state[key] = value.index_select(dim, keep.to(value.device))
        optimizer.state[new] = state


def _select_masker(masker: ParameterMasker, param: nn.Parameter, dim: int, size: int, keep: torch.Tensor) -> None:
    if masker.mask is not None and masker.mask.size(dim) == size:
        masker.mask = masker.mask.index_select(dim, keep.to(masker.mask.device))
    if masker.unmasked_copy is not None and masker.unmasked_copy.size(dim) == size:
        masker.unmasked_copy = masker.unmasked_copy.index_select(dim, keep.to(masker.unmasked_copy.device))
    masker.remove_gradient_hook()  # a gradient-masking hook sat on the replaced parameter
    masker.ensure_gradient_hook(param)


class ThinningStep(StepKind):
    """Replays ``{"kind": "thinning", "recipe": ...}`` (masks and optimizer follow)."""

    def check(self, step: Step) -> None:
        """The step holds a recipe of a recipe's types."""
        extra = sorted(set(step) - {"kind", "recipe"})
        if extra:
            raise CheckpointError(f"a thinning step holds its `recipe` only, not {extra}")
        check_recipe_fields(step.get("recipe"))

    def replay(self, model: nn.Module, step: Step, ctx: ReplayContext) -> None:
        """Thin the model the way the recipe says."""
        if not isinstance(step.get("recipe"), Mapping):
            raise CheckpointError("a thinning step needs its recipe")
        apply_thinning_recipes(model, [step["recipe"]], ctx.optimizer, ctx.masks)

    def describe(self, step: Step) -> str:
        """``thinning``."""
        return "thinning"


STEP_KINDS.add(THINNING_STEP, ThinningStep())
