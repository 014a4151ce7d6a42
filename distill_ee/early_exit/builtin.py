"""Built-in classifiers: architectures designed for exiting (MSDNet, RANet) declare theirs once.

A model declares its classifiers by a method ``builtin_exits()`` returning exit name -> ``{attach, branch}``
(the module whose output the classifier reads and its layers, in the branch language of ``branch.py``), in
forward order. An ``early_exits`` instance refers to them instead of writing them out::

    attach: builtin                # every built-in classifier is an exit
    exits:                         # optional: per classifier settings, and branches of the instance's own
      classifier1: {threshold: 0.3, loss_weight: 0.5}
      extra: {attach: blocks.0.layers.1, branch: [...]}

or picks some of them by name: ``classifier2: {attach: builtin}``. The instance is expanded into the plain form
(every exit with its attach point and layers) before it is validated, so the recorded structure step, the
checkpoint and every tool downstream see ordinary exits, sorted in forward order.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

from torch import nn

from ..errors import ScheduleError
from ..registry import suggest

#: the ``attach`` value that refers to the architecture's own classifiers
BUILTIN = "builtin"


def declared_exits(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """The classifiers ``model`` declares (exit name -> {attach, branch}); empty when it declares none."""
    declare = getattr(model, "builtin_exits", None)
    return dict(declare()) if callable(declare) else {}


def uses_builtin(config: Mapping[str, Any]) -> bool:
    """Whether an instance refers to built-in classifiers."""
    if config.get("attach") == BUILTIN:
        return True
    exits = config.get("exits")
    return isinstance(exits, Mapping) and any(isinstance(e, Mapping) and e.get("attach") == BUILTIN
                                              for e in exits.values())


def expand_builtin(config: Mapping[str, Any], model: nn.Module, order: Any = None) -> Dict[str, Any]:
    """``config`` with its references to built-in classifiers written out; unchanged when it has none.

    ``order(attach_names) -> positions`` sorts the expanded exits in forward order (default: the declared
    classifiers first, in their order, then the instance's own branches).
    """
    config = dict(config)
    if "attach" in config and config["attach"] != BUILTIN:
        raise ScheduleError(f"an instance-level `attach` can only be `{BUILTIN}` (every built-in classifier), "
                            f"got {config['attach']!r}", path="attach", valid=[BUILTIN])
    if not uses_builtin(config):
        return config
    every = config.pop("attach", None) == BUILTIN
    declared = declared_exits(model)
    if not declared:
        raise ScheduleError(f"{type(model).__name__} declares no built-in classifiers; give every exit `attach` "
                            f"and `branch`", path="attach" if every else _first_builtin(config))
    raw = config.get("exits", {}) if every else config["exits"]
    if not isinstance(raw, Mapping):
        return config  # the validator reports it
    chosen: Dict[str, Dict[str, Any]] = {n: dict(e) for n, e in declared.items()} if every else {}
    own: Dict[str, Any] = {}
    for name, entry in raw.items():
        refers = isinstance(entry, Mapping) and entry.get("attach") == BUILTIN
        if refers or (every and name in declared and isinstance(entry, Mapping) and "attach" not in entry):
            chosen[name] = _builtin_entry(name, entry, declared)
        else:
            own[name] = entry
    exits = {n: chosen[n] for n in declared if n in chosen}
    exits.update(own)
    if order is not None and own:
        exits = _in_forward_order(exits, order)
    config["exits"] = exits
    return config


def _builtin_entry(name: str, entry: Any, declared: Mapping[str, Dict[str, Any]]) -> Dict[str, Any]:
    """A built-in classifier's exit: its declared attach point and layers plus the instance's settings."""
    path = f"exits.{name}"
    if name not in declared:
        raise ScheduleError(f"no built-in classifier named {name!r}", path=f"{path}.attach",
                            valid=list(declared), suggestions=suggest(str(name), list(declared)))
    entry = dict(entry) if isinstance(entry, Mapping) else {}
    if "branch" in entry:
        raise ScheduleError(f"{name!r} is a built-in classifier: its layers are the architecture's; drop `branch`, "
                            f"or give a branch of your own another name", path=f"{path}.branch")
    entry.pop("attach", None)
    return {**declared[name], **entry}


def _first_builtin(config: Mapping[str, Any]) -> str:
    for name, entry in dict(config.get("exits") or {}).items():
        if isinstance(entry, Mapping) and entry.get("attach") == BUILTIN:
            return f"exits.{name}.attach"
    return "attach"


def _in_forward_order(exits: Dict[str, Any], order: Any) -> Dict[str, Any]:
    """``exits`` sorted by where their attach modules run; as given when that cannot be told (the validator
    then reports the bad attach point)."""
    names: List[str] = list(exits)
    attach: Sequence[Any] = [e.get("attach") if isinstance(e, Mapping) else None for e in exits.values()]
    if not all(isinstance(a, str) for a in attach):
        return exits
    try:
        positions = order(list(attach))
    except ScheduleError:
        return exits
    ranked = sorted(range(len(names)), key=lambda i: positions[i])
    return {names[i]: exits[names[i]] for i in ranked}
