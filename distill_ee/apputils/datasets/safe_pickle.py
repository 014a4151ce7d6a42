"""Unpickling restricted to plain containers and numpy arrays, for dataset files in pickle format."""
from __future__ import annotations

import io
import pickle
from typing import Any

# What numpy arrays need across numpy 1.x / 2.x and pickle protocols 2-5; nothing that can run code.
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global; raise UnpicklingError for any other."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_restricted(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 byte strings decoded as latin1) with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
