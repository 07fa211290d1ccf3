"""python -m aml.cli.synthetic: generate the synthetic
landmark data sets."""

import logging
from typing import Optional, Sequence

from aml.cli.arguments import Parser, field_type, flag_type, folder, nonnegative_int, positive_int, run_cli
from aml.data.paths import resolve_data_root
from aml.data.synthetic import ASPECT_DRAWS, SyntheticTestConfig, SyntheticTrainConfig, generate_all
from aml.utils.bounds import Bound

#: the side of a synthetic image: a few pixels draw nothing, 10^9 took all the memory (MemoryError)
IMAGE_SIZE = Bound(int, "an integer from 8 to 4096", lambda v: 8 <= v <= 4096)


def build_parser() -> Parser:
    """The flags of ``python -m aml.cli.synthetic``."""
    parser = Parser(prog="python -m aml.cli.synthetic", description="Generate the synthetic landmark data sets.")
    parser.add_argument("--data-root", default=None, type=folder, help="data root (default $AML_DATA_ROOT or ./data)")
    parser.add_argument(
        "--image-size", type=flag_type(IMAGE_SIZE), default=160, help="longer side of generated images (8 to 4096)"
    )
    parser.add_argument(
        "--train-landmarks",
        type=field_type(SyntheticTrainConfig, "train_landmarks"),
        default=SyntheticTrainConfig.train_landmarks,
        help="landmarks of synth-sfm's train split",
    )
    parser.add_argument(
        "--val-landmarks",
        type=field_type(SyntheticTrainConfig, "val_landmarks"),
        default=SyntheticTrainConfig.val_landmarks,
        help="landmarks of synth-sfm's val split",
    )
    parser.add_argument(
        "--views",
        type=field_type(SyntheticTrainConfig, "views"),
        default=SyntheticTrainConfig.views,
        help="training views per landmark",
    )
    parser.add_argument(
        "--test-landmarks",
        type=positive_int,
        default=SyntheticTestConfig.landmarks,
        help="query landmarks of synth-oxford and of synth-paris (2 queries each)",
    )
    parser.add_argument(
        "--distractors",
        type=nonnegative_int,
        default=SyntheticTestConfig.distractor_landmarks,
        help="other landmarks whose views fill each test database",
    )
    parser.add_argument(
        "--aspects",
        choices=sorted(ASPECT_DRAWS),
        default=SyntheticTrainConfig.aspects,
        help="the views' aspect ratios: four usual ones (a few image shapes), or varied, any between 2:1 and 1:2 "
        "as photos come (many shapes)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="added to every set's seed")
    parser.add_argument("--overwrite", action="store_true", help="regenerate existing sets")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: python -m aml.cli.synthetic --data-root DIR [sizes]."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train = SyntheticTrainConfig(
        args.train_landmarks,
        args.val_landmarks,
        args.views,
        image_size=args.image_size,
        seed=SyntheticTrainConfig.seed + args.seed,
        aspects=args.aspects,
    )
    test = SyntheticTestConfig(
        landmarks=args.test_landmarks,
        distractor_landmarks=args.distractors,
        image_size=args.image_size,
        seed=SyntheticTestConfig.seed + args.seed,
        aspects=args.aspects,
    )
    generate_all(resolve_data_root(args.data_root), args.overwrite, train, test, progress=not args.quiet)


if __name__ == "__main__":
    run_cli(main)
