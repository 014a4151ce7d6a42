#!/usr/bin/env python
"""Train or fine-tune a classifier under a compression schedule; see --help and the README.

The same program as the ``distill-ee`` command; ``compress_classifier.py check SCHEDULE --arch ARCH``
validates a schedule and prints its plan without training.
"""
import sys

from distill_ee.apputils.cli import main

if __name__ == "__main__":
    sys.exit(main())
