"""Names a user gives that become file or folder names (a run's name, a tier's, a cascade member's): plain names
only, checked before anything is written, so that no name reaches outside the folder it is written in. Nothing
here imports torch."""
from __future__ import annotations

from typing import Any, Optional

#: the longest name that becomes a file name (file systems allow 255 bytes, and names get prefixes)
MAX_NAME = 100


def name_problem(name: Any) -> Optional[str]:
    """What is wrong with ``name`` as a file name (None: nothing): empty, a path separator, ``.``/``..``, a
    control character, or more than ``MAX_NAME`` characters."""
    plain = isinstance(name, str) and 0 < len(name) <= MAX_NAME and name not in (".", "..") \
        and not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name)
    if plain:
        return None
    shown = name if not isinstance(name, str) or len(name) <= 2 * MAX_NAME else name[:MAX_NAME] + "..."
    return f"must be a plain name (no path separators, at most {MAX_NAME} characters), got {shown!r}"
