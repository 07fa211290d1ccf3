"""extract_features.py: descriptors (D x N .npy + image list) of every image of a data set.

Test sets: their database images. Training sets: every image of the chosen split(s), in
db order, which is what ``main.py --feat-path`` (train) / ``--feat-val-path`` (val) read.
"""

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from aml.cli.arguments import (Parser, add_runtime_arguments, nonnegative_int, parse_scales, positive_int, resolve_device,
                               setup_logging)
from aml.data.paths import data_subdir
from aml.data.testsets import TEST_SETS, configdataset, prepare_test_set, query_and_database_paths
from aml.data.trainsets import TRAIN_SETS, load_training_db
from aml.features import describe_images, feature_file_name, network_fingerprint, write_feature_file
from aml.networks.loading import load_test_network
from aml.networks.retrieval_net import ImageRetrievalNet, multiscale_power

log = logging.getLogger(__name__)


def dataset_images(dataset: str, split: str, data_root: Optional[str]) -> List[str]:
    """Image paths of a training split or of a test set's database."""
    if dataset.lower() in {name.lower() for name in TRAIN_SETS}:
        return list(load_training_db(dataset, split, data_root)["images"])
    prepare_test_set(dataset, data_root)
    return query_and_database_paths(configdataset(dataset, data_subdir(data_root, "test")))[0]


def extract_dataset_features(net: ImageRetrievalNet, network_name: str, dataset: str, split: str,
                             image_size: int, scales: Sequence[float] = (1,), data_root: Optional[str] = None,
                             output: Optional[Path] = None, fingerprint: Optional[str] = None, **options) -> Path:
    """Encode a data set (split) with ``net`` and write ``<data_root>/features/<name>.npy``
    (``fingerprint``: the weights' hash, when the caller already has it)."""
    images = dataset_images(dataset, split, data_root)
    is_train_set = dataset.lower() in {name.lower() for name in TRAIN_SETS}
    path = output or data_subdir(data_root, "features") / feature_file_name(
        dataset, network_name, split if is_train_set else None, image_size)
    log.info(">> %s (%s): extracting %d images with %s...", dataset, split, len(images), network_name)
    vecs = describe_images(net, images, image_size, scales, multiscale_power(net, list(scales)),
                           desc=f"{dataset} {split}", **options)
    write_feature_file(vecs, images, path, {"network": network_name, "fingerprint": fingerprint or network_fingerprint(net),
                                            "image_size": image_size, "scales": [float(x) for x in scales]})
    log.info(">> %s: %s x %s descriptors written to %s", dataset, vecs.shape[0], vecs.shape[1], path)
    return path


def build_parser() -> argparse.ArgumentParser:
    """extract_features.py flags: test.py's network options plus the split to encode."""
    parser = Parser(description="Write the descriptors of a data set for --feat-path.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--network-path", "-npath", metavar="NETWORK", help="pretrained name or checkpoint file")
    group.add_argument("--network-offtheshelf", "-noff", metavar="NETWORK", help="'ARCH-POOL[-reg][-lwhiten][-whiten]'")
    parser.add_argument("--datasets", "-d", metavar="DATASETS", default="roxford5k,rparis6k",
                        help=f"comma separated: {', '.join(list(TEST_SETS) + list(TRAIN_SETS))}")
    parser.add_argument("--split", default="train,val",
                        help="training-set splits to encode, comma separated (default: train,val)")
    parser.add_argument("--image-size", "-imsize", default=1024, type=positive_int, metavar="N")
    parser.add_argument("--multiscale", "-ms", metavar="MULTISCALE", default="[1]", type=parse_scales)
    parser.add_argument("--gpu-id", "-g", default="0", metavar="N")
    parser.add_argument("--teacher", "-t", default="vgg16", help="dimension fallback for checkpoints without outputdim")
    parser.add_argument("--workers", "-j", default=8, type=nonnegative_int)
    parser.add_argument("--batch-size", default=None, type=positive_int, help="images per forward (default: 32 CUDA, 4 CPU)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    add_runtime_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> List[Path]:
    """Run extract_features.py with ``argv``; returns the files written."""
    args = build_parser().parse_args(argv)
    setup_logging()
    device = resolve_device(args.device, args.gpu_id)
    net, name = load_test_network(args.network_path, args.network_offtheshelf, args.teacher, args.data_root)
    options = dict(workers=args.workers, device=str(device), batch_size=args.batch_size, amp=args.amp,
                   progress=not args.quiet)
    written = []
    for dataset in filter(None, args.datasets.split(",")):
        is_train_set = dataset.lower() in {n.lower() for n in TRAIN_SETS}
        if not is_train_set and dataset.lower() not in TEST_SETS:
            raise SystemExit(f"Unsupported or unknown dataset: {dataset}! Choose from {list(TEST_SETS) + list(TRAIN_SETS)}")
        for split in (filter(None, args.split.split(",")) if is_train_set else ["db"]):
            written.append(extract_dataset_features(net, name, dataset, split, args.image_size, args.multiscale,
                                                    args.data_root, **options))
    return written
