"""The ``distill-ee`` command: the sample app (as ``compress_classifier.py``), ``distill-ee check`` and
``distill-ee cascade``."""
from __future__ import annotations

import sys
from typing import List, Optional

from . import app, cascade_cli, check


def main(argv: Optional[List[str]] = None) -> int:
    """``distill-ee check ...`` validates a schedule, ``distill-ee cascade ...`` runs a cascade; anything else
    runs the sample app."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check":
        return check.main(args[1:])
    if args and args[0] == "cascade":
        return cascade_cli.main(args[1:])
    return app.main(args)
