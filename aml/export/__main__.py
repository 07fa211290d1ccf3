"""python -m aml.export (the command line lives in aml.cli.export)."""

if __name__ == "__main__":
    from aml.cli.arguments import run_cli
    from aml.cli.export import main

    run_cli(main)
