"""Hooks registered on a model for the length of a ``with`` block only."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from torch.utils.hooks import RemovableHandle


@contextlib.contextmanager
def removing(handles: Sequence[RemovableHandle]) -> Iterator[None]:
    """Remove every hook in ``handles`` when the block ends, however it ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
