"""python -m aml.demo"""

from aml.demo.pipeline import main

main()
