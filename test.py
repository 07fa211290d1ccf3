#!/usr/bin/env python
"""Evaluate a retrieval network (symmetric or asymmetric). See `python test.py --help`."""

from aml.cli.arguments import run_cli
from aml.cli.test import main

if __name__ == "__main__":
    run_cli(main)
