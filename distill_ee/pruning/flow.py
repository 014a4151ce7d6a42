"""What reads a convolution's output, from a torch.fx trace: its batch norm and the ReLU after them.

Used by the pruning policy's ``fold_batchnorm`` (the BatchNorm2d reading a Conv2d's output, Distiller's
Conv2D->BN edge) and by the APoZ pruners (the ReLU whose zeros rank the convolution's filters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import DistillEEError
from ..fx_trace import trace_graph
from ..modules import unwrap, wrapper_prefix

#: activations whose output is zero exactly where their input is not positive
ZERO_BELOW = (nn.ReLU, nn.ReLU6)
ZERO_BELOW_FUNCTIONS = (F.relu, F.relu6, torch.relu, torch.relu_)
ZERO_BELOW_METHODS = ("relu", "relu_")


@dataclass(frozen=True)
class ActivationSource:
    """Where a convolution's post-ReLU zeros are seen: a ReLU module's output, or the input of a ReLU."""

    #: the module to hook (full name in the model)
    module: str
    #: True when the hooked output is the ReLU's input, so its zeros are the values that are not positive
    before_relu: bool


class ModuleFlow:
    """The module calls of a model's fx graph and the operations reading their outputs."""

    def __init__(self, model: nn.Module):
        inner, self.prefix = unwrap(model), wrapper_prefix(model)
        with torch.no_grad():
            graph = trace_graph(inner)  # UntraceableError (a DistillEEError) names the model and where
        self.modules: Dict[str, nn.Module] = dict(inner.named_modules())
        self.calls: Dict[str, List[fx.Node]] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                self.calls.setdefault(str(node.target), []).append(node)

    def _inner_name(self, module: str) -> str:
        return module[len(self.prefix):] if self.prefix and module.startswith(self.prefix) else module

    def _single_call(self, module: str) -> Optional[fx.Node]:
        calls = self.calls.get(self._inner_name(module), [])
        return calls[0] if len(calls) == 1 else None

    def batchnorm_after(self, conv: str) -> Optional[str]:
        """The BatchNorm2d that reads the output of ``conv`` (called once), or None when there is none."""
        node = self._single_call(conv)
        if node is None:
            return None
        bns = [str(u.target) for u in node.users
               if u.op == "call_module" and isinstance(self.modules.get(str(u.target)), nn.BatchNorm2d)]
        if len(bns) > 1:
            raise DistillEEError(f"{conv!r} feeds {len(bns)} batch norms ({', '.join(bns)}); fold_batchnorm "
                                 "folds one")
        return self.prefix + bns[0] if bns else None

    def relu_after(self, conv: str) -> Optional[ActivationSource]:
        """Where the ReLU reading ``conv``'s output (directly or after its batch norm) shows its zeros."""
        node = self._single_call(conv)
        if node is None:
            return None
        source = self._inner_name(conv)
        bn = self.batchnorm_after(conv)
        if bn is not None and len(node.users) == 1:
            node, source = next(iter(node.users)), self._inner_name(bn)
        if len(node.users) != 1:
            return None
        reader = next(iter(node.users))
        if reader.op == "call_module" and isinstance(self.modules.get(str(reader.target)), ZERO_BELOW):
            if len(self.calls[str(reader.target)]) == 1:
                return ActivationSource(self.prefix + str(reader.target), before_relu=False)
            return ActivationSource(self.prefix + source, before_relu=True)  # a ReLU module shared by layers
        if (reader.op == "call_function" and reader.target in ZERO_BELOW_FUNCTIONS) or (
                reader.op == "call_method" and reader.target in ZERO_BELOW_METHODS):
            return ActivationSource(self.prefix + source, before_relu=True)
        return None


@torch.no_grad()
def batchnorm_folded(weight: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``weight`` with each filter scaled by ``gamma / sqrt(running_var + eps)`` of ``bn`` (gamma 1 without affine).

    Distiller's ``PruningPolicy._fold_batchnorm`` (equations 20-21 of Krishnamoorthi 2018, arXiv:1806.08342).
    """
    if bn.running_var is None:
        raise DistillEEError(f"fold_batchnorm needs batch norms with running statistics; {bn} has none")
    gamma = bn.weight if bn.affine and bn.weight is not None else torch.ones_like(bn.running_var)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.view(-1, *([1] * (weight.dim() - 1)))
