"""The ``distill-ee`` command: the sample app (as ``compress_classifier.py``) and its subcommands."""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from ..errors import MissingExtraError
from ..extras import extra_modules, require_installed

#: subcommand -> the module whose ``main(argv)`` runs it (imported when used); anything else runs the app
SUBCOMMANDS = {
    "check": "check",              # validate a schedule against a model, without training
    "cascade": "cascade_cli",      # run a cascade of independent models
    "plan-split": "split_cli",     # place a multi-exit model's stages on tiers
    "sweep": "sweep_cli",          # a search over a schedule's values and the flags, on Optuna
}


def main(argv: Optional[List[str]] = None) -> int:
    """Run a subcommand (``SUBCOMMANDS``) or the sample app; a missing extra is one line and status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        require_installed(extra_modules("app"), "the sample app (distill-ee, compress_classifier.py)")
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args and args[0] in SUBCOMMANDS:
        return importlib.import_module(f".{SUBCOMMANDS[args[0]]}", __package__).main(args[1:])
    return importlib.import_module(".app", __package__).main(args)
