"""python -m aml.demo"""

from aml.cli.arguments import run_cli
from aml.demo.pipeline import main

run_cli(main)
