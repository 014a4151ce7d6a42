"""The one torch.fx tracing policy of the framework: which modules stay whole, and a model left as it was.

* Torch's own layers stay leaves (one ``call_module`` node), and so do their subclasses (timm's
  ``class Linear(nn.Linear)``), so forward hooks on them fire in anything built from the graph.
* A torch module fx keeps whole that holds submodules (``nn.TransformerEncoder`` and its ``.layers.N``) is traced
  through when a name in ``through`` lies inside it, and stays a leaf otherwise. The transformer stacks are
  traced through their plain layer loop (their own forward's fast-path checks cannot be traced).
* Tracing restores every module attribute the trace set or mutated (a cache dict left holding fx Proxies, the
  tensor constants fx stores on the root), so a model can be traced again and again.

Every tracer of the framework (exit staging, thinning, pruning flow, model summary, routing) is an ``FxTracer``.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Collection, Dict, Iterator, List, Optional, Tuple

from torch import fx, nn

from .errors import DistillEEError
from .modules import first_line

#: torch classes that are containers, never leaves themselves
_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _is_torch_class(cls: type) -> bool:
    """True for a class defined by torch.nn (or torch.ao.nn) that is not a plain container."""
    module = getattr(cls, "__module__", "") or ""
    return module.startswith(("torch.nn", "torch.ao.nn")) and cls not in _CONTAINERS


def torch_layer_class(module: nn.Module) -> Optional[type]:
    """The first torch.nn layer class in ``module``'s MRO (``nn.Linear`` for timm's Linear), or None."""
    return next((cls for cls in type(module).__mro__ if _is_torch_class(cls)), None)


def is_torch_leaf(module: nn.Module) -> bool:
    """True when fx should keep ``module`` whole: a torch layer, or a subclass of one without submodules."""
    cls = torch_layer_class(module)
    if cls is None:
        return False
    return cls is type(module) or not any(True for _ in module.children())


# --------------------------------------------------------------------------- torch stacks traced through
def _encoder_forward(self: nn.TransformerEncoder, src: Any, mask: Any = None, src_key_padding_mask: Any = None,
                     is_causal: Optional[bool] = None) -> Any:
    """``nn.TransformerEncoder.forward``'s layer loop (its slow path), without the untraceable fast-path checks."""
    output = src
    for layer in self.layers:
        output = layer(output, src_mask=mask, is_causal=bool(is_causal), src_key_padding_mask=src_key_padding_mask)
    return self.norm(output) if self.norm is not None else output


def _decoder_forward(self: nn.TransformerDecoder, tgt: Any, memory: Any, tgt_mask: Any = None,
                     memory_mask: Any = None, tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                     tgt_is_causal: Optional[bool] = None, memory_is_causal: bool = False) -> Any:
    """``nn.TransformerDecoder.forward``'s layer loop, without its causal-mask detection (not traceable)."""
    output = tgt
    for layer in self.layers:
        output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                       tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                       tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
    return self.norm(output) if self.norm is not None else output


#: torch's own forwards that fx cannot trace, and the equivalent traced in their place
TRACEABLE_FORWARDS: Dict[Callable[..., Any], Callable[..., Any]] = {
    nn.TransformerEncoder.forward: _encoder_forward,
    nn.TransformerDecoder.forward: _decoder_forward,
}


# --------------------------------------------------------------------------- the tracer
class FxTracer(fx.Tracer):
    """The framework's fx tracer: ``leaves`` kept whole, torch layers (and subclasses) kept whole unless a name in
    ``through`` lies inside one, ``whole`` (a predicate) for any other module to keep whole."""

    def __init__(self, leaves: Collection[str] = (), through: Collection[str] = (),
                 whole: Optional[Callable[[nn.Module], bool]] = None) -> None:
        super().__init__()
        self.leaves = set(leaves)
        self.through = tuple(through)
        self.whole = whole
        #: the modules being traced through, outermost first (where a failure happened)
        self.inside: List[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Named leaves, ``whole`` modules and torch layers not holding a ``through`` name are leaves."""
        if module_qualified_name in self.leaves or (self.whole is not None and self.whole(m)):
            return True
        if not is_torch_leaf(m):
            return False
        prefix = module_qualified_name + "." if module_qualified_name else ""
        return not any(name.startswith(prefix) for name in self.through)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Tuple[Any, ...],
                    kwargs: Dict[str, Any]) -> Any:
        """Trace the call; a torch stack traced through runs its traceable forward; the path is kept on failure."""
        own = TRACEABLE_FORWARDS.get(getattr(type(m), "forward", None))
        if own is not None:
            forward = functools.partial(own, m)
        self.inside.append(self._name_of(m))
        out = super().call_module(m, forward, args, kwargs)
        self.inside.pop()
        return out

    def _name_of(self, m: nn.Module) -> str:
        try:
            return self.path_of_module(m)
        except NameError:  # a module that is not part of the traced root
            return type(m).__name__

    def failed_inside(self) -> str:
        """Where a failed trace stopped: `` in module 'a.b' (Type)`` for the innermost module, or ''."""
        inner = [n for n in self.inside if n]
        if not inner:
            return ""
        name = inner[-1]
        try:
            kind = type(self.root.get_submodule(name)).__name__
        except AttributeError:
            kind = "module"
        return f" in module {name!r} ({kind})"


# --------------------------------------------------------------------------- the model left as it was
def _snapshot(state: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """Each attribute's value and, for a dict, list or set, a copy of its contents."""
    saved = {}
    for key, value in dict.items(state):
        if isinstance(value, dict):
            saved[key] = (value, list(dict.items(value)))
        elif isinstance(value, (list, set)):
            saved[key] = (value, list(value))
        else:
            saved[key] = (value, None)
    return saved


def _same(a: List[Any], b: List[Any]) -> bool:
    """True when two content lists hold the same objects (identity, not equality)."""
    return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))


def _identical(x: Any, y: Any) -> bool:
    if isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y):
        return all(p is q for p, q in zip(x, y))
    return x is y


def _refill(value: Any, contents: List[Any]) -> None:
    """Put ``contents`` back into the container ``value`` (same object), without its own overrides."""
    if isinstance(value, OrderedDict):
        value.clear()
        value.update(contents)
    elif isinstance(value, dict):
        dict.clear(value)
        dict.update(value, contents)
    elif isinstance(value, list):
        list.__setitem__(value, slice(None), contents)
    else:
        set.clear(value)
        set.update(value, contents)


def _now(value: Any) -> List[Any]:
    return list(dict.items(value)) if isinstance(value, dict) else list(value)


def _restore(state: Dict[str, Any], saved: Dict[str, Tuple[Any, Any]]) -> None:
    """Undo what happened to a module's ``__dict__`` since ``saved``: new keys, replaced values, refilled
    containers."""
    for key in [k for k in dict.keys(state) if k not in saved]:
        del state[key]
    for key, (value, contents) in saved.items():
        if state.get(key, _MISSING) is not value:
            state[key] = value
        if contents is not None and not _same(_now(value), contents):
            _refill(value, contents)


_MISSING = object()


@contextmanager
def state_kept(model: nn.Module) -> Iterator[nn.Module]:
    """For the block, anything done to the ``__dict__`` of ``model``'s modules (and their top-level dicts, lists
    and sets) is undone when it ends."""
    saved = [(m, _snapshot(m.__dict__)) for m in model.modules()]
    try:
        yield model
    finally:
        for module, state in saved:
            _restore(module.__dict__, state)


# --------------------------------------------------------------------------- entry points
class UntraceableError(DistillEEError):
    """torch.fx could not trace a model: which model, where inside it (``" in module 'a.b' (Type)"`` or ''),
    and fx's reason; callers reword it with their own advice."""

    def __init__(self, model: str, where: str, reason: str) -> None:
        super().__init__(f"torch.fx cannot trace {model}{where}: {reason}")
        self.model, self.where, self.reason = model, where, reason


def trace_graph(model: nn.Module, tracer: Optional[FxTracer] = None,
                concrete_args: Optional[Dict[str, Any]] = None) -> fx.Graph:
    """The fx graph of ``model`` (with ``tracer``, a plain ``FxTracer`` by default), the model left untouched;
    UntraceableError when it cannot be traced."""
    return _traced(model, tracer or FxTracer(), concrete_args, as_module=False)


def trace_module(model: nn.Module, tracer: Optional[FxTracer] = None,
                 concrete_args: Optional[Dict[str, Any]] = None) -> fx.GraphModule:
    """``model`` traced into a GraphModule sharing its layers and parameters, the model left untouched."""
    return _traced(model, tracer or FxTracer(), concrete_args, as_module=True)


def _traced(model: nn.Module, tracer: FxTracer, concrete_args: Optional[Dict[str, Any]], as_module: bool) -> Any:
    with state_kept(model):
        try:
            graph = tracer.trace(model, concrete_args=concrete_args)
        except DistillEEError:
            raise
        except Exception as err:  # fx raises many kinds (TraceError, TypeError on proxies, ...)
            raise UntraceableError(type(model).__name__, tracer.failed_inside(), first_line(err)) from None
        # built before the model is restored: it copies the tensor constants fx stored on the root
        return fx.GraphModule(tracer.root, graph, type(model).__name__) if as_module else graph
