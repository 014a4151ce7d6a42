"""``python -m distill_ee``: the ``distill-ee`` command."""
import sys

from distill_ee.apputils.cli import main

sys.exit(main())
