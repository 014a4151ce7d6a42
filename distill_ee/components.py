"""Imports every built-in module that registers classes a schedule may name."""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil

_PACKAGES = ("distill_ee.pruning", "distill_ee.regularization", "distill_ee.policies", "distill_ee.early_exit")
_MODULES = ("distill_ee.lr_schedulers", "distill_ee.thinning")
_loaded = False


def load_builtin_components() -> None:
    """Import the pruners, regularizers, LR schedulers, extensions and exit classes (once)."""
    global _loaded
    if _loaded:
        return
    for pkg_name in _PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg_name}.{info.name}")
    for mod in _MODULES:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
    _loaded = True
