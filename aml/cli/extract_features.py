"""extract_features.py: descriptors (D x N .npy + image list) of every image of a data set.

Test sets: their database images. Training sets: every image of the chosen split(s), in
db order, which is what ``main.py --feat-path`` (train) / ``--feat-val-path`` (val) read.
"""

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from aml.cli.arguments import (
    Parser,
    add_extraction_arguments,
    add_image_size_arguments,
    add_runtime_arguments,
    comma_names,
    extraction_from,
    nonnegative_int,
    output_folder,
    run_cli,
    setup_logging,
)
from aml.data.paths import data_subdir
from aml.data.testsets import TEST_SETS, get_test_set
from aml.data.trainsets import get_train_set, is_training_set, training_set_names
from aml.descriptors import DescriptorKey, dataset_images, extract_dataset_features
from aml.networks.loading import load_test_network
from aml.utils.devices import resolve_device
from aml.utils.errors import ConfigError
from aml.utils.distributed import init_from_environment, main_first, process_device

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """extract_features.py flags: test.py's network options plus the split to encode."""
    parser = Parser(description="Write the descriptors of a data set for --feat-path.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--network-path", "-npath", metavar="NETWORK", help="pretrained name or checkpoint file")
    group.add_argument("--network-offtheshelf", "-noff", metavar="NETWORK", help="'ARCH-POOL[-reg][-lwhiten][-whiten]'")
    parser.add_argument(
        "--datasets",
        "-d",
        metavar="DATASETS",
        default="roxford5k,rparis6k",
        help=f"comma separated: {', '.join(list(TEST_SETS) + training_set_names())}, or a set of your own "
        "(make_testset, make_trainset)",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="training-set splits to encode, comma separated (default: train,val); a test set's database is "
        "encoded whole",
    )
    add_image_size_arguments(parser)
    parser.add_argument("--gpu-id", "-g", default="0", metavar="N", help="GPU id used with --device auto (default: 0)")
    parser.add_argument("--teacher", "-t", default="vgg16", help="dimension fallback for checkpoints without outputdim")
    parser.add_argument(
        "--workers",
        "-j",
        default=8,
        type=nonnegative_int,
        help="image loading workers; on the CPU at most the cores torch's threads leave free (default: 8)",
    )
    add_extraction_arguments(parser)
    parser.add_argument(
        "--shard-size",
        default=0,
        type=nonnegative_int,
        metavar="N",
        help="write a resumable descriptor store of N images per shard (the folder <name>.store, "
        "which main.py --feat-path also reads) instead of one .npy (default: 0, one .npy)",
    )
    parser.add_argument(
        "--store-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="dtype of the store's shards (default: float32)",
    )
    add_runtime_arguments(parser)
    return parser


def _data_set_name(name: str, data_root: Optional[str]) -> str:
    """A training or test set's name as its registry spells it (the file names and main.py's
    look-up use that spelling), or a ConfigError naming both kinds of choices."""
    if is_training_set(name, data_root):
        return get_train_set(name, data_root).name
    try:
        return get_test_set(name, data_root).name
    except ConfigError as err:
        raise ConfigError(
            f"{err}; or a training set: {', '.join(training_set_names())}, or one of your own in "
            f"{data_subdir(data_root, 'train') / name} (python -m aml.cli.make_trainset)"
        ) from None


def main(argv: Optional[List[str]] = None) -> List[Path]:
    """Run extract_features.py with ``argv``; returns the files written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.store_dtype != "float32" and not args.shard_size:
        parser.error(f"--store-dtype {args.store_dtype} sets the dtype of a store's shards: give --shard-size N too")
    try:
        datasets = comma_names("--datasets", args.datasets, "data set")
        splits = comma_names("--split", "train,val" if args.split is None else args.split, "split")
        output_folder(str(data_subdir(args.data_root, "features")))  # before any image is encoded
    except (ConfigError, argparse.ArgumentTypeError) as err:
        parser.error(str(err))
    datasets = [_data_set_name(dataset, args.data_root) for dataset in datasets]
    twice = next((name for k, name in enumerate(datasets) if name in datasets[:k]), None)
    if twice is not None:
        parser.error(f"--datasets {args.datasets!r} names {twice} twice; give each data set once")
    if args.split is not None and not any(is_training_set(d, args.data_root) for d in datasets):
        parser.error(
            f"--split {args.split} chooses a training set's splits; {args.datasets} holds test sets only, "
            "whose database is encoded whole: leave --split out"
        )
    requested = resolve_device(args.device, args.gpu_id)
    world = init_from_environment(requested, args.dist_timeout)
    setup_logging(verbose=world.is_main)
    device = process_device(requested, world)
    network = main_first(
        world, lambda: load_test_network(args.network_path, args.network_offtheshelf, args.teacher, args.data_root)
    )
    config = extraction_from(args, str(device))
    key = DescriptorKey.of(network.net, args.image_size, args.multiscale, config, network.fingerprint)
    parts = [(d, s) for d in datasets for s in (splits if is_training_set(d, args.data_root) else ["db"])]
    # downloads and generation by rank 0 first, under torchrun; then the collective extractions
    main_first(world, lambda: [dataset_images(dataset, split, args.data_root) for dataset, split in parts])
    shard_size = args.shard_size or None
    return [
        extract_dataset_features(
            network,
            dataset,
            split,
            key,
            args.data_root,
            shard_size=shard_size,
            store_dtype=args.store_dtype,
            config=config,
        )
        for dataset, split in parts
    ]


if __name__ == "__main__":
    run_cli(main)
