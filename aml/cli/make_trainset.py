"""python -m aml.cli.make_trainset: a training set of your own images (see aml.data.make_trainset)."""

import shlex
import sys
from typing import List, Optional

from aml.cli.arguments import (
    Parser,
    check_input_folders,
    folder,
    input_folder,
    nonnegative_int,
    positive_int,
    run_cli,
    unit_interval,
)
from aml.data.make_trainset import TrainSetError, TrainSetReport, build_train_set, images_from_csv, images_from_folders
from aml.utils.atomic import DiskFull


def build_parser() -> Parser:
    """The flags of ``python -m aml.cli.make_trainset``."""
    parser = Parser(
        prog="python -m aml.cli.make_trainset",
        description="Build <data_root>/train/NAME (ims/, NAME.pkl, NAME-whiten.pkl) for main.py -d NAME.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folders", type=input_folder, help="one sub-folder of images per landmark")
    source.add_argument("--csv", help="CSV of image,landmark rows, or GLDv2's train_clean.csv (landmark_id,images)")
    parser.add_argument("--images", type=input_folder, help="folder the CSV's image names or ids are relative to")
    parser.add_argument("--name", required=True, help="name of the training set (main.py -d NAME)")
    parser.add_argument(
        "--val-fraction",
        type=unit_interval,
        default=0.1,
        help="fraction of landmarks held out for validation (at least one, and two in each split from 4 "
        "landmarks: negatives come from other landmarks; default: 0.1)",
    )
    parser.add_argument(
        "--pairs-per-landmark",
        type=positive_int,
        default=6,
        help="query/positive pairs per landmark, chained over its shuffled images (default: 6)",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the validation draw and of the pairs (default: 0)"
    )
    parser.add_argument(
        "--data-root", default=None, type=folder, help="where train/NAME is written (default: $AML_DATA_ROOT or ./data)"
    )
    return parser


def main(argv: Optional[List[str]] = None) -> TrainSetReport:
    """Parse the flags, build the set, print what was kept and left out."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_input_folders(parser, args, {"--folders": "the landmark folders", "--images": "the images"})
    if args.csv and not args.images:
        parser.error("--csv needs --images (the folder its image names are relative to)")
    if args.folders and args.images:
        parser.error(
            "--images is the folder of --csv's image names; --folders names its images itself: leave --images out"
        )
    try:
        items = (
            images_from_folders(args.folders, args.data_root)
            if args.folders
            else images_from_csv(args.csv, args.images)
        )
        report = build_train_set(
            items, args.name, args.data_root, args.val_fraction, args.pairs_per_landmark, args.seed
        )
    except (TrainSetError, OSError, KeyError, DiskFull) as err:
        sys.exit(f"error: {err}")
    print("\n".join(report.lines()))
    root = f" --data-root {shlex.quote(str(args.data_root))}" if args.data_root else ""  # as a shell reads it
    print(f">> train with: python main.py -d {args.name}{root} ...; whitening: test.py -w {args.name}{root}")
    return report


if __name__ == "__main__":
    run_cli(main)
