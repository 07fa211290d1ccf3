"""python -m aml.cli.make_testset: a test set of your own images (see aml.data.make_testset)."""

import logging
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from aml.cli.arguments import Parser, check_input_folders, folder, input_folder, run_cli
from aml.data.images import ImageLoadError
from aml.data.make_testset import TestSetError, build_test_set, read_database_list, read_description
from aml.utils.atomic import DiskFull


def build_parser() -> Parser:
    """The flags of ``python -m aml.cli.make_testset``."""
    parser = Parser(
        prog="python -m aml.cli.make_testset",
        description="Build <data_root>/test/NAME (jpg/ + gnd_NAME.pkl) from a JSON or CSV description.",
    )
    parser.add_argument("description", help="JSON or CSV: queries (image, box, easy/hard/junk or ok/junk lists)")
    parser.add_argument("--images", required=True, type=input_folder, help="folder the image names are relative to")
    parser.add_argument("--name", required=True, help="name of the test set (test.py -d NAME)")
    parser.add_argument(
        "--database",
        default=None,
        metavar="LIST",
        help="text file of database image names, one per line (default: every image of --images "
        "that is not a query, or the description's 'database')",
    )
    parser.add_argument(
        "--data-root", default=None, type=folder, help="where test/NAME is written (default: $AML_DATA_ROOT or ./data)"
    )
    return parser


def main(argv: Optional[List[str]] = None) -> Path:
    """Parse the flags, build the set, print where it is; errors end in one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_input_folders(parser, args, {"--images": "the images"})
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        description = read_description(args.description)
        if args.database:
            description["database"] = read_database_list(args.database)
        source = args.description + (f" with --database {args.database}" if args.database else "")
        built = build_test_set(description, args.images, args.name, args.data_root, source=source)
    except (TestSetError, ImageLoadError, OSError, KeyError, ValueError, DiskFull) as err:
        message = f"missing column or key {err}" if isinstance(err, KeyError) else str(err)
        sys.exit(f"error: {message}")
    root = f" --data-root {shlex.quote(str(args.data_root))}" if args.data_root else ""  # as a shell reads it
    print(f">> test set written to {built}; evaluate with: python test.py -d {args.name}{root} ...")
    return built


if __name__ == "__main__":
    run_cli(main)
