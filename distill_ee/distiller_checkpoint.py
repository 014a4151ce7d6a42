"""Distiller checkpoints: read without running any of their code, and converted to this project's checkpoints.

Distiller's ``save_checkpoint`` pickles a dict that ``torch.load(weights_only=True)`` refuses: its thinning
recipes are ``distiller.thinning.ThinningRecipe`` namedtuples, ``optimizer_type`` is the optimizer's class and
``quantizer_metadata`` holds the quantizer's class. ``read_distiller_file`` loads such a file with torch's
``weights_only`` unpickler and an allow-list of those names only: ``ThinningRecipe`` becomes a namedtuple of the
same fields, other ``distiller.*`` and ``torch.optim.*`` names become inert stand-ins (never imported, never
run), NumPy scalars (Distiller's top-1 figures) are rebuilt; any other global is refused, naming it, before
anything is built. ``from_distiller`` turns the dict into this project's layout (``module.`` prefixes
removed, masks from ``compression_sched``, the optimizer state, the epoch and best top-1), and
``resolve_distiller_thinning`` turns the recipes into thinning structure steps sized on the model they are
replayed on (``load_checkpoint`` calls it). A checkpoint of a model Distiller quantized is refused, saying
what to do instead.
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections import namedtuple
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .errors import CheckpointError
from .modules import first_line

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
#: key of a converted checkpoint naming the tool that wrote it
CONVERTED_KEY = "converted_from"
#: key holding a converted checkpoint's thinning recipes until a model sizes them
PENDING_THINNING_KEY = "distiller_thinning"
#: the keys only a Distiller checkpoint has
DISTILLER_ONLY_KEYS = ("optimizer_state_dict", "optimizer_type", "quantizer_metadata", "extras", "is_parallel")
#: attempts at loading a file whose names the static scan could not list (an old, non-zip torch.save file)
MAX_LOAD_ATTEMPTS = 64
_GLOBAL_IN_ERROR = re.compile(r"GLOBAL ([A-Za-z_][\w.]*[\w])")

#: Distiller's thinning recipe, rebuilt under its own name and fields
ThinningRecipe = namedtuple("ThinningRecipe", ["modules", "parameters"])


class PickledName:
    """A class a checkpoint names, kept as its name: never imported; calling it only records the arguments."""

    qualified_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledName":
        """An inert record of the arguments the checkpoint gave."""
        obj = super().__new__(cls)
        obj.__dict__["args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to initialise: the arguments are recorded by ``__new__``."""

    def __setstate__(self, state: Any) -> None:
        """Keep the pickled state as data."""
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name}>"


@lru_cache(maxsize=None)
def _stand_in(qualified: str) -> type:
    """The inert class standing for the global ``qualified`` (one per name)."""
    return type(qualified.rpartition(".")[2] or "Name", (PickledName,), {"qualified_name": qualified})


def allowed_global(qualified: str) -> Optional[Any]:
    """What the global ``qualified`` (``module.name``) loads as in a Distiller checkpoint; None when refused."""
    if qualified == "distiller.thinning.ThinningRecipe":
        return ThinningRecipe
    if qualified in ("builtins.frozenset", "builtins.slice"):
        return frozenset if qualified.endswith("frozenset") else slice
    if qualified.startswith("numpy."):
        return _numpy_global(qualified)
    module, _, name = qualified.rpartition(".")
    if name.isidentifier() and (module == "distiller" or module.startswith(("distiller.", "torch.optim."))):
        return _stand_in(qualified)
    return None


def _numpy_global(qualified: str) -> Optional[Any]:
    """NumPy's scalar and dtype constructors (how a pickled ``numpy.float64`` is rebuilt), nothing else."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    if qualified in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        return core.multiarray.scalar
    if qualified == "numpy.dtype":
        return np.dtype
    prefix, _, name = qualified.rpartition(".")
    dtypes = getattr(np, "dtypes", None)
    found = getattr(dtypes, name, None) if prefix == "numpy.dtypes" and name.endswith("DType") else None
    return found if isinstance(found, type) and issubclass(found, np.dtype) else None


def _numpy_dtype_classes() -> Dict[str, type]:
    """NumPy's dtype classes by qualified name (``numpy.dtypes.Float64DType`` ...)."""
    import numpy as np

    dtypes = getattr(np, "dtypes", None)
    found = {name: getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")}
    return {f"numpy.dtypes.{name}": cls for name, cls in found.items()
            if isinstance(cls, type) and issubclass(cls, np.dtype)}


# --------------------------------------------------------------------------- reading
def read_distiller_file(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """The dict a Distiller checkpoint file holds, read with only its allowed names; CheckpointError (one line,
    naming the file and the global) for any other global, before anything is built."""
    path = Path(path)
    names = _scan_globals(path)
    for name in names:
        if allowed_global(name) is None:
            raise _refusal(path, name)
    admitted = {name: allowed_global(name) for name in names}
    if "numpy.dtype" in admitted:  # a rebuilt dtype is set up by its own class (numpy.dtypes.Float64DType ...)
        admitted.update(_numpy_dtype_classes())
    for _ in range(MAX_LOAD_ATTEMPTS):
        try:
            with torch.serialization.safe_globals([(obj, name) for name, obj in admitted.items()]):
                state = torch.load(path, map_location=map_location, weights_only=True)
            break
        except pickle.UnpicklingError as exc:
            match = _GLOBAL_IN_ERROR.search(str(exc))
            name = match.group(1) if match else None
            if name is None or name in admitted or allowed_global(name) is None:
                raise _refusal(path, name, exc) from None
            admitted[name] = allowed_global(name)
            if name == "numpy.dtype":
                admitted.update(_numpy_dtype_classes())
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged: "
                                  f"{first_line(exc)})") from None
    else:
        raise CheckpointError(f"{path}: refused to load: the checkpoint names more than {MAX_LOAD_ATTEMPTS} "
                              "Python globals")
    if not is_distiller_checkpoint(state):
        shown = ", ".join(sorted(admitted)) or "objects torch does not load by default"
        raise CheckpointError(f"{path}: refused to load: the checkpoint carries pickled Python objects ({shown}) "
                              "and is not a Distiller checkpoint (no 'state_dict' with Distiller's keys)")
    return state


def _scan_globals(path: Path) -> List[str]:
    """The globals a zip checkpoint's pickle names beyond torch's safe ones, read without unpickling."""
    if not zipfile.is_zipfile(path):
        return []  # the legacy format: names are admitted one by one as the loader meets them
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (RuntimeError, ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged: "
                              f"{first_line(exc)})") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load: its pickle could not be checked ({first_line(exc)})") \
            from None


def _refusal(path: Path, name: Optional[str], exc: Optional[BaseException] = None) -> CheckpointError:
    what = f"the global {name} is not allowed" if name else (first_line(exc) if exc else "an object")
    return CheckpointError(f"{path}: refused to load: the checkpoint carries pickled Python objects that could run "
                           f"code ({what}; nothing was run: only tensors, plain values and a Distiller checkpoint's "
                           "recipes and class names are accepted)")


# --------------------------------------------------------------------------- recognising and converting
def is_distiller_checkpoint(state: Any) -> bool:
    """True for a dict Distiller's ``save_checkpoint`` wrote (its keys, not this project's ``structure``)."""
    if not isinstance(state, Mapping) or any(k in state for k in ("format", "structure", "early_exit")):
        return False
    weights = state.get("state_dict")
    if not isinstance(weights, Mapping):
        return False
    recipes = state.get("thinning_recipes")
    if isinstance(recipes, (list, tuple)) and any(_is_distiller_recipe(r) for r in recipes):
        return True
    schedule = state.get("compression_sched")
    if isinstance(schedule, Mapping) and "masks_dict" in schedule:
        return True
    if any(key in state for key in DISTILLER_ONLY_KEYS):
        return True
    return "arch" in state and any(isinstance(k, str) and k.startswith("module.") for k in weights)


def _is_distiller_recipe(recipe: Any) -> bool:
    return isinstance(recipe, tuple) and getattr(recipe, "_fields", None) == ThinningRecipe._fields


def normalize_name(name: str) -> str:
    """``name`` without the ``module`` component DataParallel adds (Distiller's ``normalize_module_name``)."""
    parts = name.split(".")
    if "module" in parts:
        parts.remove("module")
    return ".".join(parts)


def from_distiller(state: Mapping[str, Any], where: PathLike) -> Dict[str, Any]:
    """This project's checkpoint dict for Distiller's ``state`` (read from ``where``); its thinning recipes wait
    under ``distiller_thinning`` for ``resolve_distiller_thinning``. CheckpointError when a part does not fit."""
    _refuse_quantized(state.get("quantizer_metadata"), where)
    weights = state["state_dict"]
    converted: Dict[str, Any] = {CONVERTED_KEY: "distiller", "structure": [],
                                 "state_dict": {normalize_name(str(k)): v for k, v in weights.items()}}
    if len(converted["state_dict"]) != len(weights):
        raise CheckpointError(f"{where}: the Distiller checkpoint's state_dict names a parameter twice (with and "
                              "without DataParallel's 'module.')")
    for key in ("epoch", "arch", "dataset"):
        if state.get(key) is not None:
            converted[key] = state[key]
    if isinstance(state.get("optimizer_state_dict"), Mapping):
        converted["optimizer"] = state["optimizer_state_dict"]
    optimizer_type = state.get("optimizer_type")
    if isinstance(optimizer_type, type) and issubclass(optimizer_type, PickledName):
        converted["optimizer_type"] = optimizer_type.qualified_name
    extras = _plain_extras(state.get("extras"))
    if extras:
        converted["extras"] = extras
        best = extras.get("best_top1")
        if isinstance(best, (int, float)) and not isinstance(best, bool):
            converted["best_top1"] = float(best)
    masks = _masks(state.get("compression_sched"), where)
    if masks is not None:
        converted["compression_sched"] = {"masks": masks, "policies": {}}
    recipes = state.get("thinning_recipes")
    if recipes:
        converted[PENDING_THINNING_KEY] = _plain_recipes(recipes, where)
    log.info("%s: a Distiller checkpoint, converted (%d weights, %d masks, %d thinning recipes%s)", where,
             len(converted["state_dict"]), len(masks or {}), len(recipes or []),
             f", epoch {converted['epoch']}" if "epoch" in converted else "")
    return converted


def _refuse_quantized(metadata: Any, where: PathLike) -> None:
    """CheckpointError for a model Distiller quantized: its wrapped layers' weights are not this project's."""
    if metadata is None:
        return
    kind = metadata.get("type") if isinstance(metadata, Mapping) else None
    name = getattr(kind, "qualified_name", "") or "a quantizer"
    short = name.rpartition(".")[2]
    from .components import load_components
    from .registry import QUANTIZERS

    load_components()
    here = (f"quantize it here with {short} (--quantize-eval, or a quantizers: section in the schedule)"
            if short in QUANTIZERS else f"quantize it here ({short} has no counterpart; --quantize-eval or a "
            f"quantizers: section with one of {', '.join(QUANTIZERS.names())})")
    raise CheckpointError(f"{where}: the Distiller checkpoint holds a model quantized by {name}, whose quantized "
                          f"layers are not loaded here: load Distiller's checkpoint from before quantization and "
                          f"{here}")


def _plain_extras(extras: Any) -> Dict[str, Any]:
    """The numbers and strings of Distiller's ``extras`` (NumPy scalars as Python numbers)."""
    if not isinstance(extras, Mapping):
        return {}
    plain: Dict[str, Any] = {}
    for key, value in extras.items():
        if hasattr(value, "item") and getattr(value, "shape", None) in ((), torch.Size([])):  # NumPy or 0-d tensor
            value = value.item()
        if isinstance(key, str) and isinstance(value, (bool, int, float, str)):
            plain[key] = value
    return plain


def _masks(schedule: Any, where: PathLike) -> Optional[Dict[str, Dict[str, Any]]]:
    """The ``masks`` of this project's schedule state for Distiller's ``{'masks_dict': {name: mask or None}}``."""
    if schedule is None:
        return None
    masks = schedule.get("masks_dict") if isinstance(schedule, Mapping) else None
    if not isinstance(masks, Mapping):
        raise CheckpointError(f"{where}: the Distiller checkpoint's 'compression_sched' lacks its 'masks_dict' "
                              "mapping")
    out: Dict[str, Dict[str, Any]] = {}
    for name, mask in masks.items():
        if mask is None:
            continue
        if not isinstance(name, str) or not isinstance(mask, torch.Tensor):
            raise CheckpointError(f"{where}: the Distiller checkpoint's mask {name!r} is not a tensor")
        out[normalize_name(name)] = {"mask": mask}
    return out


def _plain_recipes(recipes: Any, where: PathLike) -> List[Dict[str, Any]]:
    """Distiller's recipes as ``{"modules": ..., "parameters": ...}`` dicts, names without ``module.``."""
    if not isinstance(recipes, (list, tuple)) or not all(_is_distiller_recipe(r) for r in recipes):
        raise CheckpointError(f"{where}: the Distiller checkpoint's 'thinning_recipes' must be a list of "
                              "ThinningRecipe(modules, parameters)")
    plain = []
    for i, recipe in enumerate(recipes, start=1):
        if not isinstance(recipe.modules, Mapping) or not isinstance(recipe.parameters, Mapping):
            raise CheckpointError(f"{where}: Distiller thinning recipe {i}: 'modules' and 'parameters' must be "
                                  "mappings")
        plain.append({"modules": {normalize_name(str(k)): v for k, v in recipe.modules.items()},
                      "parameters": {normalize_name(str(k)): v for k, v in recipe.parameters.items()}})
    return plain


# --------------------------------------------------------------------------- thinning
def resolve_distiller_thinning(model: nn.Module, state: Mapping[str, Any]) -> Dict[str, Any]:
    """``state`` with its pending Distiller recipes appended to ``structure`` as thinning steps, each selection
    sized on ``model``'s current shapes (Distiller records kept indices, not the sizes they were taken from)."""
    from .thinning.recipe import THINNING_STEP

    resolved = {k: v for k, v in state.items() if k != PENDING_THINNING_KEY}
    recipes = state.get(PENDING_THINNING_KEY)
    if not recipes:
        return resolved
    if not isinstance(recipes, (list, tuple)):
        raise CheckpointError("the Distiller thinning recipes must be a list")
    shapes = {name: list(t.shape) for name, t in chain(model.named_parameters(), model.named_buffers())}
    steps = list(resolved.get("structure") or [])
    for i, recipe in enumerate(recipes, start=1):
        try:
            steps.append({"kind": THINNING_STEP, "recipe": _native_recipe(recipe, shapes)})
        except CheckpointError as err:
            raise CheckpointError(f"Distiller thinning recipe {i} of {len(recipes)}: {err}") from None
    resolved["structure"] = steps
    return resolved


def _native_recipe(recipe: Any, shapes: Dict[str, List[int]]) -> Dict[str, Dict[str, Any]]:
    """One Distiller recipe as this project's ``{"modules", "tensors"}`` recipe; ``shapes`` follow its selections."""
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("modules"), Mapping) \
            or not isinstance(recipe.get("parameters"), Mapping):
        raise CheckpointError("a Distiller recipe maps 'modules' and 'parameters'")
    native: Dict[str, Dict[str, Any]] = {"modules": {}, "tensors": {}}
    for module, directives in recipe["modules"].items():
        if not isinstance(directives, Mapping):
            raise CheckpointError(f"module {module!r}: its directives must be a mapping")
        for attr, value in directives.items():
            if attr in ("running_mean", "running_var"):
                dim, keep = _directive(f"{module}.{attr}", value, 2)[:2]
                _select(native, shapes, f"{module}.{attr}", dim, keep)
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                native["modules"].setdefault(module, {})[str(attr)] = value
            else:
                raise CheckpointError(f"module {module!r}: {attr!r} is set to {value!r}, not a size"[:300])
    for name, directives in recipe["parameters"].items():
        if not isinstance(directives, (list, tuple)):
            raise CheckpointError(f"parameter {name!r}: its directives must be a list")
        for directive in directives:
            if isinstance(directive, (list, tuple)) and len(directive) == 4:
                _select_reshaped(native, shapes, name, *_directive(name, directive, 4))
            else:
                _select(native, shapes, name, *_directive(name, directive, 2)[:2])
    return native


def _directive(name: str, directive: Any, length: int) -> Tuple[Any, ...]:
    """``(dim, kept indices[, view shape, final shape])`` checked: an integer dimension, integer indices."""
    if not isinstance(directive, (list, tuple)) or len(directive) != length:
        raise CheckpointError(f"{name!r}: a directive is (dimension, indices) or (dimension, indices, view, shape)")
    dim, keep = directive[0], directive[1]
    if isinstance(dim, bool) or not isinstance(dim, int) or not isinstance(keep, torch.Tensor) \
            or keep.is_floating_point() or keep.is_complex() or keep.dtype == torch.bool:
        raise CheckpointError(f"{name!r}: a directive's dimension must be an integer and its indices an integer "
                              "tensor")
    shapes = tuple(tuple(int(s) for s in d) if isinstance(d, (list, tuple, torch.Size)) else None
                   for d in directive[2:])
    if any(s is None for s in shapes):
        raise CheckpointError(f"{name!r}: a reshaping directive's view and shape must be lists of sizes")
    return (dim, keep.reshape(-1).to(torch.long)) + shapes


def _select(native: Dict[str, Dict[str, Any]], shapes: Dict[str, List[int]], name: str, dim: int,
            keep: torch.Tensor) -> None:
    shape = shapes.get(name)
    if shape is None:
        raise CheckpointError(f"it thins {name!r}, which the model lacks")
    if not 0 <= dim < len(shape):
        raise CheckpointError(f"it thins dimension {dim} of {name!r}, which has {len(shape)}")
    native["tensors"].setdefault(name, []).append([dim, shape[dim], keep])
    shape[dim] = keep.numel()


def _select_reshaped(native: Dict[str, Dict[str, Any]], shapes: Dict[str, List[int]], name: str, dim: int,
                     keep: torch.Tensor, view: Tuple[int, ...], final: Tuple[int, ...]) -> None:
    """A selection Distiller makes on a view (a linear layer's inputs seen as channels x height x width) as the
    equivalent selection of the flat dimension."""
    shape = shapes.get(name)
    if shape is None:
        raise CheckpointError(f"it thins {name!r}, which the model lacks")
    if shape == list(final) and shape != [view[0], _product(view[1:])]:
        return  # thinned already
    if len(shape) != 2 or len(view) < 2 or view[0] != shape[0] or _product(view[1:]) != shape[1] \
            or not 1 <= dim < len(view) or (keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= view[dim])):
        raise CheckpointError(f"{name!r} of shape {tuple(shape)} cannot be viewed as {view} to keep indices of "
                              f"dimension {dim}")
    flat = torch.arange(shape[1]).view(*view[1:]).index_select(dim - 1, keep).reshape(-1)
    if list(final) != [shape[0], flat.numel()]:
        raise CheckpointError(f"{name!r}: keeping {keep.numel()} of dimension {dim} of {view} gives "
                              f"{(shape[0], flat.numel())}, not the recorded {final}")
    _select(native, shapes, name, 1, flat)


def _product(sizes: Tuple[int, ...]) -> int:
    result = 1
    for size in sizes:
        result *= size
    return result
