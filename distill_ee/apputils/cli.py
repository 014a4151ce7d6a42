"""The ``distill-ee`` command: the sample app (as ``compress_classifier.py``), ``distill-ee check`` and
``distill-ee cascade`` and ``distill-ee plan-split``."""
from __future__ import annotations

import sys
from typing import List, Optional

from . import app, cascade_cli, check, split_cli


def main(argv: Optional[List[str]] = None) -> int:
    """``check`` validates a schedule, ``cascade`` runs a cascade, ``plan-split`` places a multi-exit model on
    tiers; anything else runs the sample app."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check":
        return check.main(args[1:])
    if args and args[0] == "cascade":
        return cascade_cli.main(args[1:])
    if args and args[0] == "plan-split":
        return split_cli.main(args[1:])
    return app.main(args)
