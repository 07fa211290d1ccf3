"""python -m aml.cli.download: put data sets and networks on disk ahead of a run (before a
torchrun job, or on a machine with internet for compute nodes without it)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from aml.cli.arguments import Parser, comma_names, folder, run_cli, setup_logging
from aml.data.distractors import DISTRACTOR_SETS, prepare_distractors, split_test_name
from aml.data.paths import DataRootLike, resolve_data_root
from aml.data.testsets import TEST_SETS, prepare_test_set
from aml.data.trainsets import TRAIN_SETS, prepare_train_set
from aml.networks.imagenet import find_weights, get_imagenet_weights
from aml.networks.loading import pretrained_checkpoint, published_whitening_file
from aml.networks.pretrained import TEACHERS, published_spelling
from aml.utils.errors import ConfigError


@dataclass(frozen=True)
class Download:
    """One thing to put on disk: what the command line called it and how to fetch it
    (data root, progress bars -> the paths it fills)."""

    name: str
    fetch: Callable[[Path, bool], List[Path]]


def _test_set(name: str) -> Optional[Download]:
    """A registered test set, with its distractor set after '+' (``roxford5k+1m``)."""
    test, suffix = split_test_name(name)
    if test.lower() not in TEST_SETS:
        return None

    def fetch(root: Path, progress: bool) -> List[Path]:
        paths = [prepare_test_set(test.lower(), root, progress)]
        return paths + ([prepare_distractors(suffix, root, progress)] if suffix else [])

    return Download(name, fetch)


def _distractor_set(name: str) -> Optional[Download]:
    """A distractor set by its suffix (``1m``) or its folder's name (``revisitop1m``)."""
    suffixes = [key for key, entry in DISTRACTOR_SETS.items() if name.lower() in (key, entry.folder.lower())]
    if not suffixes:
        return None
    return Download(name, lambda root, progress: [prepare_distractors(suffixes[0], root, progress)])


def _train_set(name: str) -> Optional[Download]:
    """A registered training or whitening set (``retrieval-SfM-120k``)."""
    known = [key for key in TRAIN_SETS if key.lower() == name.lower()]
    if not known:
        return None
    return Download(name, lambda root, progress: [prepare_train_set(known[0], root, progress=progress)])


def _published(name: str) -> Optional[Download]:
    """A published network (a name of the pretrained list or a teacher's alias) and the
    whitening file it is published with."""
    given = published_spelling(name)  # any case, as the data sets' names
    if given is None:
        return None
    listed = TEACHERS.get(given, given)

    def fetch(root: Path, progress: bool) -> List[Path]:
        checkpoint = pretrained_checkpoint(listed, root, progress)
        whitening = published_whitening_file(listed, root, progress)
        return [checkpoint] + ([whitening] if whitening else [])

    return Download(name, fetch)


#: how a name on the command line is read, in this order (the first that knows it wins)
KINDS: Tuple[Callable[[str], Optional[Download]], ...] = (_test_set, _distractor_set, _train_set, _published)


def resolve(name: str) -> Download:
    """What ``name`` stands for, the first of `KINDS` that knows it.

    Args:
        name: a name as the command line gives it.

    Returns:
        What to fetch for it.

    Raises:
        ConfigError: listing what can be fetched, when no kind knows the name.
    """
    for kind in KINDS:
        found = kind(name)
        if found is not None:
            return found
    raise ConfigError(
        f"{name!r} is no data set or published network that aml fetches; choose test sets from "
        f"{sorted(TEST_SETS)} (a distractor set after '+': roxford5k+1m), training sets from {sorted(TRAIN_SETS)}, "
        f"distractor sets from {sorted(DISTRACTOR_SETS)}, networks from {sorted(TEACHERS)} or the pretrained list "
        "(python test.py --list-pretrained); ImageNet weights with --imagenet ARCH. Sets of your own images are "
        "made, not fetched (python -m aml.cli.make_testset, make_trainset)"
    )


def _imagenet(arch: str) -> Download:
    """An architecture's ImageNet weights (a ConfigError names the architectures that have them)."""
    get_imagenet_weights(arch)
    return Download(f"{arch} (ImageNet)", lambda root, progress: [find_weights(arch, root, progress=progress)[0]])


def build_parser() -> Parser:
    """The flags of ``python -m aml.cli.download``."""
    parser = Parser(
        prog="python -m aml.cli.download",
        description="Download (or generate) data sets and networks into the data root ahead of a run.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="test sets (roxford5k, with +1m its distractors too), training sets (retrieval-SfM-120k), "
        "distractor sets (1m) and published networks (vgg16, resnet101, a name of --list-pretrained)",
    )
    parser.add_argument(
        "--imagenet",
        default=None,
        metavar="ARCH[,ARCH...]",
        help="architectures whose ImageNet weights main.py starts from, comma-separated (mobilenet_v2,"
        "efficientnet_b3, timm:<model>, ...)",
    )
    parser.add_argument("--data-root", default=None, type=folder, help="data root (default $AML_DATA_ROOT or ./data)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def downloads(names: Sequence[str], architectures: Sequence[str]) -> List[Download]:
    """Every name read before anything is fetched, each once: an unknown one stops the command.

    Args:
        names: data sets and published networks (`resolve`).
        architectures: architectures whose ImageNet weights to fetch.

    Returns:
        What to fetch, in the order given.

    Raises:
        ConfigError: for a name or an architecture that nothing fetches.
    """
    wanted = [resolve(name) for name in dict.fromkeys(names)]
    return wanted + [_imagenet(arch) for arch in dict.fromkeys(architectures)]


def fetch_all(wanted: Sequence[Download], data_root: DataRootLike, progress: bool) -> Iterator[Tuple[str, Path]]:
    """Fetch each download in turn into the data root, giving each path as it is in place.

    Args:
        wanted: what to fetch (`downloads`).
        data_root: the data root (None: ``$AML_DATA_ROOT`` or ``./data``).
        progress: show progress bars.

    Returns:
        (name, path) of each file or folder put in place, as it is (a later failure leaves
        the earlier ones said).
    """
    root = resolve_data_root(data_root)
    for download in wanted:
        for path in download.fetch(root, progress):
            yield download.name, path


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: python -m aml.cli.download NAME [NAME ...] [--imagenet ARCH ...]."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.names and args.imagenet is None:
        parser.error("name what to download: a data set, a published network, or --imagenet ARCH")
    try:
        architectures = comma_names("--imagenet", args.imagenet, "architecture") if args.imagenet is not None else []
        wanted = downloads(args.names, architectures)
    except ConfigError as err:
        parser.error(str(err))
    setup_logging()
    for name, path in fetch_all(wanted, args.data_root, progress=not args.quiet):
        print(f"{name}: {path}")


if __name__ == "__main__":
    run_cli(main)
