"""The CompressionScheduler behind a mask dict, so that it re-reads the parameters thinning replaced."""
from __future__ import annotations

import gc
from typing import Any, List, Mapping, Optional

from ..scheduler import CompressionScheduler


def mask_owners(masks: Optional[Mapping[str, Any]]) -> List[CompressionScheduler]:
    """Every CompressionScheduler whose ``masks`` is this very dict (found among the objects referring to it)."""
    if masks is None:
        return []
    found: List[CompressionScheduler] = []
    for ref in gc.get_referrers(masks):
        candidates = gc.get_referrers(ref) if isinstance(ref, dict) else [ref]
        for obj in candidates:
            if isinstance(obj, CompressionScheduler) and obj.masks is masks and obj not in found:
                found.append(obj)
    return found


def refresh_mask_owners(masks: Optional[Mapping[str, Any]]) -> None:
    """Make the schedulers owning ``masks`` re-read their model's parameters (after thinning replaced some)."""
    for scheduler in mask_owners(masks):
        scheduler.refresh_parameters()
