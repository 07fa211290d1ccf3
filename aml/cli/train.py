"""main.py: train a retrieval network (teacher-free or against a teacher) in any mode: the flags
parsed into a `aml.training.TrainConfig`, then `aml.training.run`."""

import argparse
import dataclasses
from typing import List, Optional

from aml.cli.arguments import (
    Parser,
    add_extraction_arguments,
    add_runtime_arguments,
    field_type,
    results_folder,
    nonnegative_int,
    run_cli,
    setup_logging,
)
from aml.data.trainsets import training_set_names, whitening_set_names
from aml.descriptors import ExtractionConfig
from aml.losses import TEMPERATURES
from aml.networks.backbones import BACKBONES, get_backbone
from aml.training import TrainConfig, TrainResult, TrainSettings, run
from aml.training.config import CHOICES, problems
from aml.training.modes import Draw
from aml.utils.distributed import current_rank

#: the modes whose epoch is --pool-size single images, not --query-size tuples
_IMAGE_MODES = ", ".join(name for name, mode in CHOICES["mode"].items() if mode.draw is Draw.IMAGES)


def _ranged(field: str):
    """The argparse type of a numeric flag: the range of its field in `TrainConfig` or its parts."""
    part = next(
        part
        for part in (TrainConfig, TrainSettings, ExtractionConfig)
        if field in {f.name for f in dataclasses.fields(part)}
    )
    return field_type(part, field)


def architecture(text: str) -> str:
    """``--arch``: a name of the backbone table or of a family (``timm:convnext_tiny``)."""
    try:
        get_backbone(text)
    except (ValueError, ImportError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the run: where it is written, how long it lasts, how often it reports, validates, tests and saves."""
    group = parser.add_argument_group("the run")
    group.add_argument(
        "--directory", metavar="EXPORT_DIR", required=True, type=results_folder, help="where the run folder is created"
    )
    group.add_argument("--comment", "-c", default="", help="appended to the run folder name")
    group.add_argument(
        "--resume",
        default="",
        metavar="FILENAME",
        help="checkpoint name in the run folder, or a checkpoint file; latest (or a name not there): the "
        "latest model_epochN there",
    )
    group.add_argument(
        "--epochs", default=100, type=_ranged("epochs"), help="the epoch the run ends after (default: 100)"
    )
    group.add_argument(
        "--print-freq", default=10, type=_ranged("print_freq"), help="a log line every N batches (default: 10)"
    )
    group.add_argument("--val-freq", default=1, type=_ranged("val_freq"), help="validate every N epochs (default: 1)")
    group.add_argument("--no-val", dest="val", action="store_false", help="do not run validation")
    group.add_argument(
        "--save-freq", default=1, type=_ranged("save_freq"), help="write model_epochN every N epochs (default: 1)"
    )
    group.add_argument(
        "--test-freq",
        default=0,
        type=_ranged("test_freq"),
        help="evaluate on --test-datasets every N epochs (0: never)",
    )
    group.add_argument(
        "--test-datasets",
        "-td",
        default="roxford5k,rparis6k",
        help="comma separated test sets for --test-freq evaluation (default: roxford5k,rparis6k)",
    )
    group.add_argument(
        "--test-image-size",
        default=1024,
        type=_ranged("test_image_size"),
        help="longer side of test images for --test-freq (default: 1024, as test.py)",
    )
    group.add_argument(
        "--test-whiten",
        default="",
        help=f"whitening set for test evaluation: {' | '.join(whitening_set_names())} or a custom set",
    )
    group.add_argument(
        "--workers",
        "-j",
        default=8,
        type=_ranged("workers"),
        help="data loading workers; on the CPU at most the cores torch's threads leave free (default: 8)",
    )
    group.add_argument(
        "--seed",
        default=0,
        type=_ranged("seed"),
        help="seed of the network's initialisation and of every random draw (tuples, shuffling); "
        "the weights depend only on the flags, the data and this (default: 0)",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the data: the training set, the image size and what an epoch's tuples hold."""
    group = parser.add_argument_group("data and tuples")
    group.add_argument(
        "--training-dataset",
        "-d",
        default="retrieval-SfM-120k",
        help=f"{' | '.join(training_set_names())}, or a folder <data_root>/train/NAME made by "
        "python -m aml.cli.make_trainset (default: retrieval-SfM-120k)",
    )
    group.add_argument(
        "--image-size", default=1024, type=_ranged("image_size"), help="longer side of training images (default: 1024)"
    )
    group.add_argument("--neg-num", "-nn", default=5, type=_ranged("neg_num"), help="negatives per tuple (default: 5)")
    group.add_argument(
        "--query-size",
        "-qs",
        default=2000,
        type=_ranged("query_size"),
        help=f"tuples (queries) per epoch; modes {_IMAGE_MODES} draw --pool-size images instead (default: 2000)",
    )
    group.add_argument(
        "--pool-size",
        "-ps",
        default=20000,
        type=_ranged("pool_size"),
        help=f"the images an epoch draws negatives from (mined or random; a triplet's positive too); an epoch's images "
        f"in modes {_IMAGE_MODES} (default: 20000)",
    )
    group.add_argument("--pos-num", "-pn", default=3, type=nonnegative_int, help="kept for compatibility (unused)")
    group.add_argument("--nexamples", default=1000, type=nonnegative_int, help="kept for compatibility (unused)")


def _add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the network trained: trunk, pooling, whitening, initial weights."""
    group = parser.add_argument_group("network")
    group.add_argument(
        "--arch",
        "-a",
        default="resnet101",
        type=architecture,
        metavar="ARCH",
        help=f"{' | '.join(sorted(BACKBONES))}, or timm:MODEL[.TAG][+patch|+cls] for any timm model "
        "(a ViT's patch tokens or class token; docs/networks.md) (default: resnet101)",
    )
    group.add_argument("--pool", "-p", default="gem", choices=sorted(CHOICES["pool"]), help="global pooling")
    group.add_argument("--local-whitening", "-lw", action="store_true", help="learnable linear layer before pooling")
    group.add_argument("--regional", "-r", action="store_true", help="regional (R-MAC grid) pooling")
    group.add_argument("--whitening", "-w", action="store_true", help="learnable whitening after pooling")
    group.add_argument("--not-pretrained", dest="pretrained", action="store_false", help="random initialisation")
    group.add_argument(
        "--trunk-weights",
        default=None,
        metavar="synthetic|FILE",
        help="start the trunk from these weights instead of ImageNet's: 'synthetic' pretrains it once on "
        "synthetic objects (the offline stand-in for ImageNet, cached in <data_root>/networks/), FILE "
        "is a trunk state dict",
    )


def _add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the teacher and the loss: who encodes what, against which teacher, with which loss."""
    group = parser.add_argument_group("teacher and loss")
    group.add_argument(
        "--mode",
        "-m",
        default="std",
        choices=list(CHOICES["mode"]),
        help="who encodes what: the student, the teacher (docs/training.md)",
    )
    group.add_argument(
        "--teacher",
        "-t",
        default="vgg16",
        help="vgg16 | resnet101 (published teachers), a name of test.py --list-pretrained, timm:MODEL-POOL "
        "or a checkpoint path (default: vgg16)",
    )
    group.add_argument("--sym", action="store_true", help="positives/negatives also go through the student")
    group.add_argument(
        "--feat-path", default=None, help=".npy teacher descriptors (D x N) of the train split, or a store folder"
    )
    group.add_argument(
        "--feat-val-path", default=None, help=".npy teacher descriptors (D x N) of the val split, or a store folder"
    )
    group.add_argument(
        "--loss", "-l", default="contrastive", choices=sorted(CHOICES["loss"]), help="the loss (docs/training.md)"
    )
    group.add_argument(
        "--loss-margin",
        "-lm",
        default=0.7,
        type=_ranged("loss_margin"),
        help="margin of contrastive/triplet; for the other losses it names the run folder alone (default: 0.7)",
    )
    group.add_argument(
        "--temp",
        default=0.1,
        type=_ranged("temp"),  # its range for the losses that read it: checked with --loss
        help=f"temperature of the softmax losses (cross_entropy, cross_entropy_dist, csd, bct, hvs, lce), "
        f"{TEMPERATURES[0]:g} to {TEMPERATURES[1]:g} (default: 0.1)",
    )


def _add_optimisation_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the optimisation: optimizer, learning rate, mini-batches, BatchNorm."""
    group = parser.add_argument_group("optimisation")
    group.add_argument("--optimizer", "-o", default="adam", choices=sorted(CHOICES["optimizer"]), help="the optimizer")
    group.add_argument(
        "--lr",
        "--learning-rate",
        default=1e-6,
        type=_ranged("lr"),
        help="learning rate, times exp(-0.01) each epoch (default: 1e-6)",
    )
    group.add_argument("--momentum", default=0.9, type=_ranged("momentum"), help="SGD's momentum (default: 0.9)")
    group.add_argument(
        "--weight-decay", "--wd", default=1e-6, type=_ranged("weight_decay"), help="weight decay (default: 1e-6)"
    )
    group.add_argument(
        "--batch-size", "-b", default=5, type=_ranged("batch_size"), help="tuples per mini-batch (default: 5)"
    )
    group.add_argument(
        "--update-every",
        "-u",
        default=1,
        type=_ranged("update_every"),
        help="optimizer step every N batches (default: 1)",
    )
    group.add_argument(
        "--proj-lr-mult",
        default=1.0,
        type=_ranged("proj_lr_mult"),
        help="learning-rate multiplier of the student's 1x1 projection; 0.1 keeps its ReLU channels "
        "alive when training from scratch at a high lr (default: 1, as the original)",
    )
    group.add_argument(
        "--train-batchnorm",
        action="store_true",
        help="BatchNorm uses batch statistics, all images of a mini-batch encoded together "
        "(for trunks trained from scratch); default: frozen, as the original",
    )
    group.add_argument(
        "--batch-forward",
        action="store_true",
        help="with frozen BatchNorm, encode all images of a mini-batch together (one forward per image "
        "shape) instead of tuple by tuple: the same result, faster, more memory; --train-batchnorm always "
        "does (default: off, as the original)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Every flag of the original main.py (names, aliases, defaults), plus --data-root,
    --device, --test-freq, --train-batchnorm, --proj-lr-mult and --seed, in groups."""
    p = Parser(description="Train a retrieval network (asymmetric metric learning).")
    _add_run_arguments(p)
    _add_data_arguments(p)
    _add_network_arguments(p)
    _add_teacher_arguments(p)
    _add_optimisation_arguments(p)
    add_extraction_arguments(p.add_argument_group("precision and decoding"), training=True)
    device = p.add_argument_group("data root and device")
    add_runtime_arguments(device)
    device.add_argument("--gpu-id", "-g", default="0", help="GPU id used with --device auto (default: 0)")
    return p


UNUSED = ("nexamples", "pos_num")  # flags of the original kept for compatibility


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed flags (the flags the original kept but never used are dropped)."""
    return TrainConfig.from_flags(**{k: v for k, v in vars(args).items() if k not in UNUSED})


def main(argv: Optional[List[str]] = None) -> TrainResult:
    """Run main.py with ``argv``: parse, check, train (`aml.training.run`)."""
    parser = build_parser()
    config = config_from_arguments(parser.parse_args(argv))
    found = problems(config)
    if found:
        parser.error(found[0])
    setup_logging(verbose=current_rank() == 0)
    return run(config)


if __name__ == "__main__":
    run_cli(main)
