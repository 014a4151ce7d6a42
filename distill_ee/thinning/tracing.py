"""torch.fx tracing for thinning: the graph of a module plus the node each module call returned."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import fx, nn

from ..attachment import layers_only
from ..errors import DistillEEError
from ..fx_trace import FxTracer, UntraceableError, trace_graph


class ModuleOutputTracer(FxTracer):
    """The shared fx tracer, also recording the output node of every module call, leaf or not."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: Dict[str, List[fx.Node]] = defaultdict(list)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Tuple[Any, ...],
                    kwargs: Dict[str, Any]) -> Any:
        """Trace the call as usual and remember which node holds its result."""
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            try:
                self.outputs[self.path_of_module(m)].append(out.node)
            except NameError:  # a module that is not part of the traced root
                pass
        return out


def trace(module: nn.Module) -> Tuple[ModuleOutputTracer, fx.Graph]:
    """The fx graph of ``module`` and the tracer that recorded its module outputs.

    Tracing runs without autograd, so forward hooks that only act while training (exit branches) stay idle.
    """
    tracer = ModuleOutputTracer()
    try:
        with torch.no_grad(), layers_only(module):
            graph = trace_graph(module, tracer)
    except UntraceableError as err:
        raise DistillEEError(f"thinning needs a model that torch.fx can trace; tracing "
                             f"{err.model} failed{err.where}: {err.reason}") from None
    return tracer, graph

