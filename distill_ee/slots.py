"""The slot table a multi-exit run carries values in, from stage to stage (PyTorch and ONNX Runtime alike).

After an exit lets samples go, every value later stages still need keeps only the rows that go on; a value
held in two slots is selected once. ``select`` says how one value keeps rows (``index_select`` for torch
tensors, fancy indexing for numpy arrays). Nothing here imports torch or numpy.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence


def shrink(env: List[Any], slots: Sequence[int], keep: Any, select: Callable[[Any, Any], Any]) -> None:
    """Replace the value of every slot of ``slots`` by ``select(value, keep)``, once per distinct value."""
    done: Dict[int, Any] = {}
    for slot in slots:
        value = env[slot]
        key = id(value)
        if key not in done:
            done[key] = select(value, keep)
        env[slot] = done[key]
