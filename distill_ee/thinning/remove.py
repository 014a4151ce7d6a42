"""Physical removal of zero filters and channels (Distiller's ``remove_filters`` and ``remove_channels``).

* ``remove_filters``: a channel goes when it is zero in every tensor its consumers read, zero filters (masks
  applied) followed through the graph (``zeros.py``). With a residual sum, that means zero in every convolution
  writing into the sum; with a product (a squeeze-and-excite block's ``scale * x``), zero in one factor is
  enough, and the other factor's filters for that channel go too.
* ``remove_channels``: a channel goes when every layer reading it ignores it (all its input weights are zero,
  in every consumer, exit branches included); its producers stop computing it.

A grouped convolution on the way loses whole groups only: a channel goes when its whole group can.
Every layer touching a removed channel follows: the producers' weights and biases, the batch norms, depthwise
and grouped convolutions on the way, the consumers' input weights (a linear layer after a flatten loses the
channel's block of features), the exit branches reading it, the pruning masks and the optimizer state.
Channels the dependency graph cannot thin (see ``graph.py``) are kept, and each kept layer is logged with
its reason and handed to the caller (``kept``). A layer whose every filter (or, for ``remove_channels``,
every input channel) is zero is refused with a ``ThinningError`` before anything changes, as Distiller
raises: removing it would remove the layer.

Removing a zero filter is exact unless the dense model turned the zero channel into a constant (a bias, or
the shift of the following batch norm); that constant is dropped, as in Distiller, and a warning says so.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..errors import ThinningError
from ..pruning.masks import ParameterMasker, notify_parameters_replaced
from .graph import build_dependency_graph
from .groups import ChannelGroup
from .recipe import Recipe, apply_recipe, empty_recipe, is_empty, record_recipe, select, set_attribute
from .rules import CONVS, NORMS, channel_block
from .zeros import evaluate, whole_blocks

log = logging.getLogger(__name__)

Masks = Optional[Mapping[str, ParameterMasker]]
#: a removed channel whose dense activation was constant up to this magnitude counts as silent
SILENT = 1e-6


class Kept(NamedTuple):
    """Zero structures of a layer that thinning kept, and why."""

    module: str
    count: int
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"keeping {self.count} zero {self.kind} of {self.module!r}: {self.reason}"


def remove_filters(model: nn.Module, masks: Masks = None, optimizer: Optional[torch.optim.Optimizer] = None, *,
                   exits: Optional[Mapping[str, str]] = None, kept: Optional[List[Kept]] = None) -> Recipe:
    """Remove every channel whose producing filters are all zero (masks applied); returns the recipe applied.

    The masks are sliced and their scheduler re-reads the parameters; ``optimizer``'s parameter groups and state
    follow; the recipe is recorded as the model's newest structure step. ``exits`` maps exit names to attach
    module names, overriding what the model's ExitSets declare. Zero filters that stay (and why) are logged and
    appended to ``kept``.
    """
    return _thin(model, masks, optimizer, exits, "filters", kept)


def remove_channels(model: nn.Module, masks: Masks = None, optimizer: Optional[torch.optim.Optimizer] = None, *,
                    exits: Optional[Mapping[str, str]] = None, kept: Optional[List[Kept]] = None) -> Recipe:
    """Remove every channel that all its consumers ignore (zero input weights); returns the recipe applied.

    Arguments as for ``remove_filters``.
    """
    return _thin(model, masks, optimizer, exits, "channels", kept)


def _thin(model: nn.Module, masks: Masks, optimizer: Optional[torch.optim.Optimizer],
          exits: Optional[Mapping[str, str]], kind: str, kept: Optional[List[Kept]]) -> Recipe:
    graph = build_dependency_graph(model, exits)
    modules = dict(model.named_modules())
    weights = _EffectiveWeights(modules, masks)
    recipe = empty_recipe()
    constants: List[Tuple[str, float]] = []
    removed = 0
    staying: List[Kept] = []
    for group in graph.groups:
        keep = _kept_channels(group, weights, kind, staying)
        if keep is None:
            continue
        _add_group(recipe, modules, group, keep)
        removed += group.channels - keep.numel()
        if kind == "filters":
            constants += _dropped_constants(modules, group, keep, weights)
    for entry in staying:
        log.warning("thinning: %s", entry)
    if kept is not None:
        kept.extend(staying)
    if is_empty(recipe):
        log.info("thinning: no zero %s to remove", kind)
        return recipe
    _warn_constants(constants)
    before = sum(p.numel() for p in model.parameters())
    apply_recipe(model, recipe, masks, optimizer)
    record_recipe(model, recipe)
    notify_parameters_replaced(masks)
    log.info("thinning: removed %d channels (%s); parameters %s -> %s", removed, kind, f"{before:,}",
             f"{sum(p.numel() for p in model.parameters()):,}")
    return recipe

# --------------------------------------------------------------------------- which channels go
class _EffectiveWeights:
    """Weights of named layers as the forward pass sees them (pruning masks applied)."""

    def __init__(self, modules: Dict[str, nn.Module], masks: Masks):
        self.modules = modules
        self.masks = masks

    def __call__(self, module: str) -> torch.Tensor:
        weight = self.modules[module].weight.detach()
        masker = self.masks.get(f"{module}.weight") if self.masks is not None else None
        if masker is not None and masker.mask is not None:
            weight = weight * masker.mask.to(weight.device, weight.dtype)
        return weight


def _zero_filters(weight: torch.Tensor, channels: int) -> torch.Tensor:
    return ~(weight.reshape(channels, -1) != 0).any(dim=1)


def _ignored_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    # conv [out, C, kh, kw] and linear-after-flatten [out, C * factor] both view as [out, C, -1]
    return ~(weight.reshape(weight.size(0), channels, -1) != 0).any(dim=2).any(dim=0)


def _kept_channels(group: ChannelGroup, weights: _EffectiveWeights, kind: str,
                   staying: List[Kept]) -> Optional[torch.Tensor]:
    """Indices of the channels to keep, or None when the group keeps all of them (reasons added to ``staying``)."""
    layers = group.producers if kind == "filters" else [c.module for c in group.consumers]
    if not layers or group.channels <= 0:
        return None
    test = _zero_filters if kind == "filters" else _ignored_channels
    zeros = {name: test(weights(name), group.channels).cpu() for name in layers}
    if not any(bool(z.any()) for z in zeros.values()):
        return None
    if not group.removable:
        staying += [Kept(n, int(z.sum()), kind, f"their channels cannot be thinned: {group.blocked}")
                    for n, z in zeros.items() if bool(z.any())]
        return None
    removable = whole_blocks(_removable(group, zeros, kind), group.block)
    staying += _partial(zeros, removable, kind, group.block)
    if bool(removable.all()):
        what = "filter" if kind == "filters" else "input channel"
        raise ThinningError(
            f"thinning: every {what} of {', '.join(repr(n) for n in zeros)} is zero, and removing them would "
            f"remove the layer (as in Distiller, this is refused): prune fewer of its structures")
    if not bool(removable.any()):
        return None
    return torch.nonzero(~removable).flatten()


def _removable(group: ChannelGroup, zeros: Dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """The channels that may go: zero where every consumer reads (filters), or ignored by every consumer."""
    if kind == "channels" or not group.reads:
        return torch.stack(list(zeros.values())).all(dim=0)
    none = torch.zeros(group.channels, dtype=torch.bool)
    return torch.stack([evaluate(r, lambda m: zeros.get(m, none), group.channels) for r in group.reads]).all(dim=0)


def _partial(zeros: Dict[str, torch.Tensor], removable: torch.Tensor, kind: str, block: int) -> List[Kept]:
    """The zero structures of a removable group that stay, each with its reason."""
    found = []
    for name, z in zeros.items():
        count = int((z & ~removable).sum())
        if count:
            found.append(Kept(name, count, kind, _partial_reason(name, zeros, kind, block)))
    return found


def _partial_reason(name: str, zeros: Dict[str, torch.Tensor], kind: str, block: int) -> str:
    others = ", ".join(n for n in zeros if n != name)
    if others and kind == "filters":
        reason = f"its channels are combined with those of {others} (added, or scaled) before they are read, " \
                 "and are not all zero there"
    elif others:
        reason = f"its channels are also read by {others}, where they are not all zero"
    else:
        reason = "its channels are not zero everywhere they are read (an operation on the way makes zero nonzero)"
    if block > 1:
        reason += f"; a grouped convolution on the way takes only whole groups of {block} channels"
    return reason


# --------------------------------------------------------------------------- recipe of one group
def _add_group(recipe: Recipe, modules: Dict[str, nn.Module], group: ChannelGroup, keep: torch.Tensor) -> None:
    n, size = int(keep.numel()), group.channels
    for name in group.producers:
        module = modules[name]
        _select_own(recipe, name, module, ("weight", "bias"), size, keep)
        set_attribute(recipe, name, "out_channels" if isinstance(module, CONVS) else "out_features", n)
    for name in group.per_channel:
        module = modules[name]
        if isinstance(module, NORMS):
            _select_own(recipe, name, module, ("weight", "bias", "running_mean", "running_var"), size, keep)
            set_attribute(recipe, name, "num_features", n)
        else:  # depthwise or grouped convolution: whole groups of filters go, each reading its own group
            _select_own(recipe, name, module, ("weight", "bias"), size, keep)
            for attr in ("in_channels", "out_channels"):
                set_attribute(recipe, name, attr, n)
            set_attribute(recipe, name, "groups", n // channel_block(module))
    for consumer in group.consumers:
        module, f = modules[consumer.module], consumer.factor
        features = (keep[:, None] * f + torch.arange(f)).flatten()
        select(recipe, f"{consumer.module}.weight", 1, size * f, features)
        set_attribute(recipe, consumer.module, "in_channels" if isinstance(module, CONVS) else "in_features", n * f)


def _select_own(recipe: Recipe, name: str, module: nn.Module, attrs: Tuple[str, ...], size: int,
                keep: torch.Tensor) -> None:
    for attr in attrs:
        if isinstance(getattr(module, attr, None), torch.Tensor):
            select(recipe, f"{name}.{attr}", 0, size, keep)


# --------------------------------------------------------------------------- exactness
@torch.no_grad()
def _dropped_constants(modules: Dict[str, nn.Module], group: ChannelGroup, keep: torch.Tensor,
                       weights: _EffectiveWeights) -> List[Tuple[str, float]]:
    """Layers whose output on the removed channels was a nonzero constant in the dense model (a producer whose
    filters there are not zero only fed a product with zero, so its bias does not count)."""
    gone = torch.ones(group.channels, dtype=torch.bool)
    gone[keep] = False
    found = []
    silent = [p for p in group.producers if bool(_zero_filters(weights(p), group.channels).cpu()[gone].all())]
    for name in silent + group.per_channel:
        value = _constant_output(modules[name])
        if value is not None:
            worst = float(value.detach().cpu()[gone].abs().max())
            if worst > SILENT:
                found.append((name, worst))
    return found


def _constant_output(module: nn.Module) -> Optional[torch.Tensor]:
    """Per channel, what the layer outputs for an all-zero channel (batch norm: its eval-mode shift)."""
    if isinstance(module, NORMS):
        if module.running_mean is None:
            return module.bias
        shift = -module.running_mean / torch.sqrt(module.running_var + module.eps)
        if module.weight is not None:
            shift = shift * module.weight
        return shift + module.bias if module.bias is not None else shift
    return getattr(module, "bias", None)


def _warn_constants(constants: List[Tuple[str, float]]) -> None:
    if not constants:
        return
    worst = max(constants, key=lambda c: c[1])
    names = ", ".join(n for n, _ in constants[:4]) + (" ..." if len(constants) > 4 else "")
    log.warning("thinning: the removed filters' channels were not zero in the dense model after %s (a constant "
                "up to %.3g after %r, from a bias or batch-norm shift); thinning drops it, as Distiller does, "
                "so outputs change slightly until fine-tuned", names, worst[1], worst[0])
