"""Generic helpers over a user's nn.Module: wrappers, Distiller's ``module.`` names, modes and dummy inputs.

Every part of the framework that looks at a model through DataParallel / DistributedDataParallel, matches a
schedule's names against the model's own, switches modes temporarily or needs a dummy batch uses these.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .inputs import InputLike, input_spec

#: wrappers whose ``module`` attribute holds the user's model (and prefix its names with ``module.``)
WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)
_GLOB_CHARS = set("*?[")


def is_wrapper(model: nn.Module) -> bool:
    """True for DataParallel, DistributedDataParallel and classes declaring ``wraps_module = True``."""
    return isinstance(model, WRAPPERS) or bool(getattr(type(model), "wraps_module", False))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DataParallel / DistributedDataParallel wrapper (the model itself otherwise)."""
    while is_wrapper(model):
        model = model.module
    return model


def wrapper_prefix(model: nn.Module) -> str:
    """The name prefix a wrapper adds to its model's parameter names (``module.`` or nothing)."""
    return "module." if is_wrapper(model) else ""


def strip_module_prefix(name: str) -> str:
    """Drop DataParallel's ``module`` path components (``module.conv1.weight`` -> ``conv1.weight``)."""
    return ".".join(part for part in name.split(".") if part != "module")


def resolve_name(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The model name ``name`` refers to, tolerating Distiller's ``module.`` prefixes; None if none."""
    candidates = list(candidates)
    if name in candidates:
        return name
    bare = strip_module_prefix(name)
    for cand in candidates:
        if cand == bare or strip_module_prefix(cand) == bare:
            return cand
    return None


def is_pattern(name: str) -> bool:
    """True for shell-style patterns such as ``layer*.conv1.weight`` (but not the bare catch-all ``*``)."""
    return name != "*" and bool(_GLOB_CHARS & set(name))


def expand_name(name: str, candidates: Iterable[str]) -> List[str]:
    """All model names matched by ``name`` (a plain name, or a shell-style pattern)."""
    candidates = list(candidates)
    if not is_pattern(name):
        hit = resolve_name(name, candidates)
        return [hit] if hit else []
    bare = strip_module_prefix(name)
    return [c for c in candidates if fnmatch.fnmatchcase(c, name) or fnmatch.fnmatchcase(c, bare)]


def module_names(model: nn.Module) -> List[str]:
    """Names of every submodule of ``model`` (the root excluded)."""
    return [n for n, _ in model.named_modules() if n]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def example_input(model: nn.Module, input_shape: InputLike, batch: int = 2) -> torch.Tensor:
    """A fixed pseudo-random batch of ``input_shape`` (an InputSpec, or a plain shape: float) on the model's
    device; a float input takes the model's floating dtype (a private generator: the global RNG is untouched)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return input_spec(input_shape).make(batch, float_dtype=dtype, device=model_device(model))


class eval_mode:
    """Context manager: every module in eval mode, each module's own mode restored afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes: List[Tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        for module, _ in self.modes:  # each module itself: a model's own train() may not recurse
            module.training = False
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for module, mode in self.modes:
            module.training = mode


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
