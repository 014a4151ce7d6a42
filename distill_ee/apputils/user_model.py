"""A model of the user's own, named on the command line: ``PACKAGE.MODULE:CALLABLE`` (called with the keyword
arguments of ``--model-args JSON``) or ``timm:NAME`` (when timm is installed), and the input it takes
(``--input-shape``, ``--input-dtype``, ``--input-range``). Every bad value is one ConfigError line."""
from __future__ import annotations

import importlib
import importlib.util
import json
from typing import Any, Dict, Optional

from torch import nn

from ..errors import ConfigError
from ..inputs import InputSpec, InputSpecError, dtype_name
from ..modules import first_line

TIMM_PREFIX = "timm:"


def load_user_model(name: str, model_args: Optional[str] = None) -> nn.Module:
    """The model ``name`` names, built with the keyword arguments of the JSON object ``model_args``."""
    kwargs = parse_model_args(model_args)
    if name.startswith(TIMM_PREFIX):
        return _checked(_timm_model(name[len(TIMM_PREFIX):], kwargs), name)
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model {name!r}: expected PACKAGE.MODULE:CALLABLE or timm:NAME")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001  (ImportError, or the module's own code failing)
        raise ConfigError(f"--model {name!r}: cannot import {module_name!r} ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--model {name!r}: module {module_name!r} has no callable {attr!r}")
    try:
        model = factory(**kwargs)
    except Exception as err:  # noqa: BLE001  (the user's constructor failing on the given arguments)
        raise ConfigError(f"--model {name!r}: calling {attr}(**{kwargs!r}) failed ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    return _checked(model, name)


def parse_model_args(text: Optional[str]) -> Dict[str, Any]:
    """The keyword arguments of ``--model-args`` (a JSON object; none: no arguments)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--model-args: not JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--model-args: must be a JSON object of keyword arguments, got {text!r}")
    return value


def parse_input(shape: Optional[str], dtype: Optional[str] = None, value_range: Optional[str] = None) -> InputSpec:
    """The InputSpec of ``--input-shape C,H,W``, ``--input-dtype`` and ``--input-range LOW,HIGH``."""
    if shape is None:
        raise ConfigError("--model needs --input-shape (one sample's shape, e.g. 3,224,224 or 128 for 128 tokens)")
    sizes = _ints("--input-shape", shape)
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--input-shape: expected positive sizes separated by commas, got {shape!r}")
    try:
        integer = dtype is not None and dtype_name(dtype) is not None
        if not integer:
            if value_range is not None:
                raise ConfigError("--input-range: for an integer --input-dtype only (e.g. --input-dtype long)")
            return InputSpec(tuple(sizes))
        if value_range is None:
            raise ConfigError(f"--input-dtype {dtype}: give --input-range LOW,HIGH (HIGH excluded, e.g. 0,VOCAB)")
        bounds = _ints("--input-range", value_range)
        if len(bounds) != 2:
            raise ConfigError(f"--input-range: expected LOW,HIGH, got {value_range!r}")
        return InputSpec(tuple(sizes), dtype, bounds[0], bounds[1])
    except InputSpecError as err:
        raise ConfigError(f"--input-dtype/--input-range: {err}") from None


def _ints(flag: str, text: str) -> list:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: expected integers separated by commas, got {text!r}") from None


def _timm_model(name: str, kwargs: Dict[str, Any]) -> Any:
    try:
        timm = importlib.import_module("timm")
    except ModuleNotFoundError as err:
        if err.name != "timm":  # timm is there but lacks a package it needs: its own error
            raise ConfigError(f"--model timm:{name}: importing timm failed: {first_line(err)}") from None
        raise ConfigError(f"--model timm:{name} needs timm, which is not installed (pip install timm)") from None
    try:
        return timm.create_model(name, **kwargs)
    except Exception as err:  # noqa: BLE001  (an unknown name, bad arguments)
        raise ConfigError(f"--model timm:{name}: {type(err).__name__}: {first_line(err)}") from None


def _checked(model: Any, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {name!r}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model

