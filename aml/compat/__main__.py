"""python -m aml.compat (the command line lives in aml.cli.compat)."""

if __name__ == "__main__":
    from aml.cli.arguments import run_cli
    from aml.cli.compat import main

    run_cli(main)
