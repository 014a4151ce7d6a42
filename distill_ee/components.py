"""The modules that register what a schedule may name: the built-in list, then installed plugins.

Built-in classes register themselves when their module is imported; ``BUILTIN_MODULES`` lists those modules
explicitly (no package walk). Third-party packages add classes the same way: their distribution declares an
entry point in the ``distill_ee.plugins`` group naming a module (or any object in it), and loading the entry
point imports that module, whose decorators register pruners, regularizers, criteria, branch layers ... ::

    [project.entry-points."distill_ee.plugins"]
    my_pruners = "my_package.pruners"
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Iterable, List, Optional, Set

from .errors import DistillEEError
from .modules import first_line

#: the entry-point group third-party packages register their modules in
PLUGIN_GROUP = "distill_ee.plugins"
#: every built-in module that registers components, sections, attachment kinds or structure step kinds
BUILTIN_MODULES = (
    "distill_ee.policies.base",
    "distill_ee.policies.pruning",
    "distill_ee.policies.regularization",
    "distill_ee.policies.lr",
    "distill_ee.policies.early_exit",
    "distill_ee.policies.routing",
    "distill_ee.routing.router",
    "distill_ee.routing.skipnet",
    "distill_ee.routing.blockdrop",
    "distill_ee.quantization.quantset",
    "distill_ee.quantization.post_train",
    "distill_ee.lr_schedulers",
    "distill_ee.pruning.magnitude",
    "distill_ee.pruning.level",
    "distill_ee.pruning.sensitivity",
    "distill_ee.pruning.agp",
    "distill_ee.pruning.ranked",
    "distill_ee.pruning.random",
    "distill_ee.pruning.splicing",
    "distill_ee.pruning.activation",
    "distill_ee.regularization.l1",
    "distill_ee.regularization.group_lasso",
    "distill_ee.early_exit.criteria",
    "distill_ee.early_exit.branch",
    "distill_ee.early_exit.exit_set",
    "distill_ee.early_exit.exits",
    "distill_ee.early_exit.deciders",
    "distill_ee.thinning.extensions",
    "distill_ee.thinning.recipe",
)

_builtins_loaded = False
_plugins_loaded: Set[str] = set()


def load_components() -> None:
    """Import the built-in modules (once) and every installed plugin not loaded yet."""
    global _builtins_loaded
    if not _builtins_loaded:
        for name in BUILTIN_MODULES:
            importlib.import_module(name)
        _builtins_loaded = True
    load_plugins()


def plugin_entry_points() -> List[importlib.metadata.EntryPoint]:
    """The installed entry points of the ``distill_ee.plugins`` group."""
    return list(importlib.metadata.entry_points(group=PLUGIN_GROUP))


def load_plugins(entry_points: Optional[Iterable[importlib.metadata.EntryPoint]] = None) -> List[str]:
    """Load the plugins not loaded yet (default: every installed one); returns their entry-point names.

    A plugin that fails to import is a DistillEEError naming it, not a traceback.
    """
    loaded = []
    for ep in plugin_entry_points() if entry_points is None else entry_points:
        key = f"{ep.name}={ep.value}"
        if key in _plugins_loaded:
            continue
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001  (any failure of third-party code is reported the same way)
            raise DistillEEError(f"plugin {ep.name!r} ({PLUGIN_GROUP} entry point {ep.value!r}) failed to load: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from None
        _plugins_loaded.add(key)
        loaded.append(ep.name)
    return loaded
