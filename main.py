#!/usr/bin/env python
"""Train a retrieval network (std, ts, ts_self, reg, rand, ... modes). See `python main.py --help`."""

from aml.cli.arguments import run_cli
from aml.cli.train import main

if __name__ == "__main__":
    run_cli(main)
