"""python -m aml.search index|query (the command line lives in aml.cli.search)."""

if __name__ == "__main__":
    from aml.cli.arguments import run_cli
    from aml.cli.search import main

    run_cli(main)
