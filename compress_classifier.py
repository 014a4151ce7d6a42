#!/usr/bin/env python
"""Train or fine-tune a classifier under a compression schedule; see --help and the README."""
import sys

from distill_ee.apputils.app import main

if __name__ == "__main__":
    sys.exit(main())
