"""Optional packages, the extra of ``pyproject.toml`` that installs each, and one way to ask for them.

The library needs torch, pyyaml, numpy and tabulate only; everything else is imported where a feature uses it,
through ``require``, so that a missing package is one line naming what to install."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Dict, Iterable, List

from .errors import MissingExtraError

#: importable top-level name -> (pip distribution, extra of distill-ee that installs it)
EXTRAS: Dict[str, tuple] = {
    "tqdm": ("tqdm", "app"),
    "matplotlib": ("matplotlib", "app"),
    "mlxtend": ("mlxtend", "app"),
    "torchvision": ("torchvision", "app"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnxruntime": ("onnxruntime", "deploy"),
    "lightning": ("lightning", "lightning"),
    "tensorboard": ("tensorboard", "tracking"),
    "mlflow": ("mlflow", "tracking"),
    "optuna": ("optuna", "sweep"),
}


def install_hint(module: str) -> str:
    """``pip install distill-ee[EXTRA]`` for ``module`` (its top-level package)."""
    top = module.split(".")[0]
    if top not in EXTRAS:
        raise KeyError(f"{top!r} is not an optional package of distill_ee; known: {', '.join(sorted(EXTRAS))}")
    return f"pip install distill-ee[{EXTRAS[top][1]}]"


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``; when its package is missing, a MissingExtraError: '<purpose> needs <package>
    (pip install distill-ee[<extra>])'."""
    top = module.split(".")[0]
    hint = install_hint(top)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the package is there but broken: its own error says more than ours would
        raise MissingExtraError(f"{purpose} needs {EXTRAS[top][0]}, which is not installed ({hint})") from None


def require_installed(modules: Iterable[str], purpose: str) -> None:
    """A MissingExtraError for the first of ``modules`` that is not installed (found without importing it)."""
    for module in modules:
        if not available(module):
            top = module.split(".")[0]
            raise MissingExtraError(f"{purpose} needs {EXTRAS[top][0]}, which is not installed "
                                    f"({install_hint(top)})")


def extra_modules(extra: str) -> List[str]:
    """The optional packages one extra installs, by their import names."""
    found = [module for module, (_, name) in EXTRAS.items() if name == extra]
    if not found:
        raise KeyError(f"no extra {extra!r}; extras: {', '.join(sorted({e for _, e in EXTRAS.values()}))}")
    return found
