#!/usr/bin/env python
"""Write the descriptors of a data set (D x N .npy). See `python extract_features.py --help`."""

from aml.cli.arguments import run_cli
from aml.cli.extract_features import main

if __name__ == "__main__":
    run_cli(main)
