"""Test top-1 per class, by the dataset's class names: the rows of summary.json's ``classes`` and the log's
table (a model that is good on average can be poor on one class, and early exit can move that)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from tabulate import tabulate


def class_names(dataset: Any) -> Optional[List[str]]:
    """The class names a dataset carries (``classes``, as torchvision's datasets and ours have), or None."""
    names = getattr(dataset, "classes", None)
    if not isinstance(names, (list, tuple)) or not names:
        return None
    return [str(name) for name in names]


def class_rows(names: Sequence[str], seen: Sequence[int], correct: Sequence[int]) -> List[Dict[str, Any]]:
    """Per class: its name, the test images of it and the top-1 (percent; None for a class without images)."""
    return [{"class": name, "images": int(n), "top1": 100.0 * c / n if n else None}
            for name, n, c in zip(names, seen, correct)]


def class_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows as a table, the worst class marked."""
    known = [r for r in rows if r["top1"] is not None]
    worst = min(known, key=lambda r: r["top1"])["class"] if known else None
    body = [[r["class"], r["images"], "-" if r["top1"] is None else f"{r['top1']:.2f}",
             "<- worst" if r["class"] == worst else ""] for r in rows]
    return tabulate(body, headers=["Class", "Test images", "Top-1 %", ""], tablefmt="github",
                    disable_numparse=True)
