"""Filter pruners ranking filters by the Average Percentage of Zeros (APoZ) of their output activations.

Hu, Peng, Tai and Tang, "Network Trimming: A Data-Driven Neuron Pruning Approach towards Efficient Deep
Architectures", 2016; Distiller's ``ActivationAPoZRankedFilterPruner`` (and its ``_AGP`` variant).

For each sample and channel of the ReLU output following a convolution, the fraction of zeros over the
feature map; the APoZ of a channel is 100 times its mean over the samples seen (Distiller's
``apoz_channels`` statistic). Filters with the highest APoZ are pruned first: with ``k = floor(fraction *
n_filters)``, the ``n_filters - k`` filters of lowest APoZ are kept (ties keep the lower index).

The pruner collects the statistic itself, with forward hooks that record only while the model trains, so it
ranks from the training steps since it last ranked that weight (Distiller ranks from its last collection
phase). The ReLU of weight ``X.convN.weight`` is module ``X.reluN`` when that is an activation module
(Distiller's naming); otherwise it is found by tracing the model with torch.fx: the ReLU reading the
convolution's output, directly or through its batch norm. When that ReLU is a function or a module shared
by several layers, its input is hooked and its non-positive values counted (exactly the zeros ReLU outputs).

A copy of a pruner (``copy.deepcopy``, as a policy's dry run makes) keeps the statistics collected so far but
collects no more; a copy with none leaves masks unchanged. The original with none at a pruning step raises a
ScheduleError: a policy whose first pruning (non-zero target) is at epoch 0 is refused when it is scheduled.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Set

import torch
from torch import nn

from ..arguments import Fraction, ParamNames
from ..errors import DistillEEError, ScheduleError
from ..registry import PRUNERS
from .agp import FILTER_GROUP_TYPES, StructuredAGP
from .flow import ActivationSource, ModuleFlow
from .pruner import num_to_prune
from .ranked import RankedStructurePruner, check_group_type

#: the activation modules Distiller's collector hooks (found by its ``.conv`` -> ``.relu`` naming)
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


class APoZStatistics:
    """Per-weight sums of the per-sample, per-channel zero fractions seen in training steps."""

    def __init__(self) -> None:
        self.zero_sums: Dict[str, torch.Tensor] = {}
        self.samples: Dict[str, int] = {}
        #: weights ranked since their last record: the next record starts them afresh
        self.consumed: Set[str] = set()
        self.handles: List[Any] = []

    def record(self, weight: str, zeros: torch.Tensor) -> None:
        """Add a batch's ``[batch, channels]`` zero fractions of ``weight``'s activation."""
        if weight in self.consumed or weight not in self.zero_sums:
            self.consumed.discard(weight)
            self.zero_sums[weight] = torch.zeros(zeros.size(1), dtype=torch.float64)
            self.samples[weight] = 0
        self.zero_sums[weight] += zeros.sum(dim=0).to(device="cpu", dtype=torch.float64)
        self.samples[weight] += zeros.size(0)

    def apoz(self, weight: str) -> Optional[torch.Tensor]:
        """The APoZ (percent) of each channel of ``weight``'s activation, or None when none was seen."""
        if not self.samples.get(weight):
            return None
        return 100.0 * self.zero_sums[weight] / self.samples[weight]

    def consume(self, weight: str) -> None:
        """Mark ``weight`` ranked: its statistic restarts at the next training step that records it."""
        self.consumed.add(weight)

    def __deepcopy__(self, memo: Dict[int, Any]) -> "APoZStatistics":
        out = APoZStatistics()
        out.zero_sums = {k: v.clone() for k, v in self.zero_sums.items()}
        out.samples = dict(self.samples)
        out.consumed = set(self.consumed)
        return out  # no hooks: a copy collects nothing

    def state_dict(self) -> Dict[str, Any]:
        """The sums, sample counts and ranked marks."""
        return {"zero_sums": dict(self.zero_sums), "samples": dict(self.samples), "consumed": sorted(self.consumed)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.zero_sums = {k: v.clone() for k, v in state.get("zero_sums", {}).items()}
        self.samples = dict(state.get("samples", {}))
        self.consumed = set(state.get("consumed", ()))


def find_activation(model: nn.Module, weight: str) -> ActivationSource:
    """Where the zeros of the ReLU after ``weight``'s convolution are seen; DistillEEError when none is found."""
    modules = dict(model.named_modules())
    conv = weight[: -len(".weight")] if weight.endswith(".weight") else weight
    distiller_name = weight.replace(".conv", ".relu")[: -len(".weight")]
    if isinstance(modules.get(distiller_name), ACTIVATION_MODULES):
        return ActivationSource(distiller_name, before_relu=False)
    try:
        source = ModuleFlow(model).relu_after(conv)
    except DistillEEError as err:
        raise DistillEEError(f"the model has no activation module {distiller_name!r} and {err}") from None
    if source is None:
        raise DistillEEError(f"no ReLU reads the output of {conv!r} (directly or after its batch norm), and the "
                             f"model has no activation module {distiller_name!r}: APoZ ranks filters by the "
                             "zeros of that ReLU")
    return source


def channel_zeros(x: torch.Tensor, before_relu: bool = False) -> torch.Tensor:
    """Per sample and channel of ``x`` (N, C, ...), the fraction of its values that are zero (of a ReLU's input:
    not positive, exactly the zeros the ReLU outputs); shape (N, C)."""
    flat = x.detach().reshape(x.shape[0], x.shape[1], -1)
    zero = flat <= 0 if before_relu else flat == 0
    return zero.float().mean(dim=-1)


def _apoz_hook(stats: APoZStatistics, weight: str, before_relu: bool) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if not module.training or not isinstance(output, torch.Tensor) or output.dim() != 4:
            return
        stats.record(weight, channel_zeros(output, before_relu))

    return hook


class ActivationRankedFilterPruner(RankedStructurePruner):
    """Ranks the filters of 4D convolution weights by a statistic of their ReLU outputs, gathered in training."""

    group_types = FILTER_GROUP_TYPES

    def __init__(
        self,
        name: str,
        group_type: str,
        desired_sparsity: Fraction,
        weights: ParamNames,
        group_dependency: Optional[str] = None,
        model: Optional[nn.Module] = None,
    ):
        super().__init__(name, group_type, desired_sparsity, weights, group_dependency)
        owner = f"{type(self).__name__} {name!r}"
        if model is None:
            raise ScheduleError(f"{owner}: needs the model, to collect activation statistics")
        params = dict(model.named_parameters())
        self.stats = APoZStatistics()
        self.sources: Dict[str, ActivationSource] = {}
        modules = dict(model.named_modules())
        for i, weight in enumerate(self.params_names):
            if weight not in params or params[weight].dim() != 4:
                shape = tuple(params[weight].shape) if weight in params else "absent"
                raise ScheduleError(f"{owner}: ranks 4D convolution weights; {weight!r} is {shape}",
                                    path=f"weights[{i}]")
            try:
                self.sources[weight] = find_activation(model, weight)
            except DistillEEError as err:
                raise ScheduleError(f"{owner}: {weight!r}: {err}", path=f"weights[{i}]") from None
        for weight, source in self.sources.items():
            hook = _apoz_hook(self.stats, weight, source.before_relu)
            self.stats.handles.append(modules[source.module].register_forward_hook(hook))

    def activation_statistic(self, param_name: str) -> Optional[torch.Tensor]:
        """The per-filter statistic of ``param_name`` (higher: pruned first), or None when none was collected."""
        return self.stats.apoz(param_name)

    def group_keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> Optional[torch.Tensor]:
        """Keep the ``n - floor(fraction * n)`` filters of lowest statistic; None when none would go."""
        n_filters = param.size(0)
        k = num_to_prune(n_filters, fraction)
        if k == 0:
            return None
        stat = self.activation_statistic(param_name)
        if stat is None:
            if not self.stats.handles:  # a copy (a dry run) that never collects: nothing to rank from
                return None
            source = self.sources[param_name].module
            raise ScheduleError(f"{type(self).__name__} {self.name!r}: no APoZ statistics of {param_name!r} at "
                                f"this pruning step: its activation ({source!r}) was not seen in any training "
                                "step yet; start the policy after at least one training epoch",
                                path=f"pruners.{self.name}")
        if stat.numel() != n_filters:
            raise ScheduleError(f"{type(self).__name__} {self.name!r}: the activation of {param_name!r} has "
                                f"{stat.numel()} channels for {n_filters} filters", path=f"pruners.{self.name}")
        self.stats.consume(param_name)
        order = torch.argsort(stat, stable=True)
        keep = torch.zeros(n_filters, dtype=param.dtype, device=param.device)
        keep[order[: n_filters - k].to(param.device)] = 1
        return keep

    def validate_window(self, starting_epoch: int, ending_epoch: Optional[int], frequency: Optional[int]) -> None:
        """Refuse a first pruning at epoch 0, before any training step could collect a statistic."""
        if starting_epoch == 0 and self.desired_sparsity > 0:
            raise _no_steps_before(self, "desired_sparsity", self.desired_sparsity)

    def state_dict(self) -> Dict[str, Any]:
        """The leader map and the collected statistics."""
        return {**super().state_dict(), "apoz": self.stats.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the leader map and the collected statistics."""
        super().load_state_dict(state)
        self.stats.load_state_dict(state.get("apoz", {}))

    def remove_hooks(self) -> None:
        """Stop collecting (the model's forward passes no longer record)."""
        for handle in self.stats.handles:
            handle.remove()
        self.stats.handles = []


def _no_steps_before(pruner: Any, arg: str, value: float) -> ScheduleError:
    return ScheduleError(f"{type(pruner).__name__} {pruner.name!r} ranks filters by activations collected in "
                         f"training steps, and none precede its first pruning at epoch 0 ({arg} {value:g}); start "
                         f"its policy at epoch 1 or later, or set {arg}: 0")


@PRUNERS.register()
class ActivationAPoZRankedFilterPruner(ActivationRankedFilterPruner):
    """Prunes the ``desired_sparsity`` fraction of filters whose ReLU outputs have the most zeros (APoZ)."""


@PRUNERS.register()
class ActivationAPoZRankedFilterPruner_AGP(StructuredAGP):
    """AGP over filters ranked by the APoZ of their ReLU outputs (highest APoZ pruned first)."""

    def __init__(
        self,
        name: str,
        initial_sparsity: Fraction,
        final_sparsity: Fraction,
        group_type: str,
        weights: ParamNames,
        group_dependency: Optional[str] = None,
        model: Optional[nn.Module] = None,
    ):
        check_group_type(f"ActivationAPoZRankedFilterPruner_AGP {name!r}", group_type, FILTER_GROUP_TYPES)
        pruner = ActivationAPoZRankedFilterPruner(name, group_type, 0, weights, group_dependency, model)
        super().__init__(name, initial_sparsity, final_sparsity, pruner)

    def validate_window(self, starting_epoch: int, ending_epoch: Optional[int], frequency: Optional[int]) -> None:
        """AGP's window check, and no non-zero target at epoch 0, before any training step."""
        super().validate_window(starting_epoch, ending_epoch, frequency)
        if starting_epoch == 0 and self.initial_sparsity > 0:
            raise _no_steps_before(self, "initial_sparsity", self.initial_sparsity)


__all__ = [
    "APoZStatistics",
    "ActivationAPoZRankedFilterPruner",
    "ActivationAPoZRankedFilterPruner_AGP",
    "ActivationRankedFilterPruner",
    "find_activation",
]
