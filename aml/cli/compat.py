"""python -m aml.compat: the compatibility matrix of several networks on the test sets."""

import argparse
import importlib.util
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

from aml.cli.arguments import (
    Parser,
    command_of,
    add_extraction_arguments,
    add_runtime_arguments,
    refuse_torchrun,
    add_test_set_arguments,
    add_worker_arguments,
    checked_test_sets,
    extraction_from,
    output_file_of,
    run_cli,
    setup_logging,
)
from aml.compat import CompatibilityMatrix, check_distinct, compatibility_matrix, draw_matrix, format_matrices
from aml.data.distractors import prepare_distractors, split_test_name
from aml.data.testsets import prepare_test_set
from aml.evaluation import DatasetResult, TestSettings
from aml.networks import NetworkSpec, load_spec
from aml.reports.provenance import provenance
from aml.utils.atomic import atomic_write
from aml.utils.text_files import strict_json
from aml.utils.devices import resolve_device
from aml.utils.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m aml.compat``: the networks, and test.py's test sets and extraction."""
    parser = Parser(
        prog="python -m aml.compat",
        description="Search every network's queries in every network's database: the compatibility matrix.",
    )
    parser.add_argument(
        "--networks",
        "-n",
        required=True,
        nargs="+",
        metavar="NETWORK",
        help="the networks, separated by commas or spaces: names of the pretrained list, teacher aliases "
        "(vgg16, resnet101) or checkpoint files; the first is the teacher, whose symmetric mAP the "
        "marks compare with",
    )
    parser.add_argument(
        "--labels",
        metavar="LABELS",
        default=None,
        help="comma separated names of the networks in the tables, in their order (default: a "
        "checkpoint's file name without .pth..., a published network as typed)",
    )
    add_test_set_arguments(parser)
    add_worker_arguments(parser)
    parser.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        type=output_file_of("JSON"),
        help="write the matrices, their marks, the networks, the settings and the provenance as JSON",
    )
    parser.add_argument(
        "--heatmap",
        metavar="FILE",
        default=None,
        type=output_file_of("PNG"),
        help="draw the matrices as heatmaps into a PNG file (the whitened ones with --whitening; needs matplotlib)",
    )
    add_extraction_arguments(parser)
    add_runtime_arguments(parser, distributed=False)
    return parser


def network_specs(words: List[str]) -> List[NetworkSpec]:
    """The networks of ``--networks`` (its words, each split at commas unless it is a file: a
    run folder's name may hold one), each parsed once."""
    return [NetworkSpec.parse(item) for word in words for item in _items(word) if item]


def _items(word: str) -> List[str]:
    return [word] if Path(word).is_file() else word.split(",")


def network_labels(given: Optional[str], specs: List[NetworkSpec]) -> List[str]:
    """One label per network: those of ``--labels``, else what each network is called (a
    checkpoint's file name, a published network as typed); a ConfigError when their number is
    wrong or two are the same."""
    if given is not None:
        labels = [label.strip() for label in given.split(",")]
        if len(labels) != len(specs):
            raise ConfigError(
                f"--labels {given!r}: {len(labels)} labels for {len(specs)} networks; give one label per "
                "network, in their order"
            )
        if not all(labels):
            raise ConfigError(f"--labels {given!r}: label {labels.index('') + 1} is empty; give each network one")
    else:
        labels = [spec.label for spec in specs]
    seen: Dict[str, str] = {}
    for spec in specs:  # one file under two spellings (or links), a published network under two names
        same = os.path.realpath(spec.path) if spec.path is not None else spec.name
        first = seen.setdefault(same, spec.given)
        if first != spec.given or specs.count(spec) > 1:
            raise ConfigError(f"{first} and {spec.given} name one network; give it once")
    for i, label in enumerate(labels):
        if label in labels[:i]:
            first = specs[labels.index(label)].given
            example = ",".join(["teacher"] + [f"student{k}" for k in range(1, len(specs))])
            raise ConfigError(
                f"two networks are called {label!r} ({first} and {specs[i].given}); name them with --labels, "
                f"one per network, e.g. --labels {example}"
            )
    return labels


def _show_pair(query: str, database: str, results: Dict[str, DatasetResult]) -> None:
    for result in results.values():
        print("\n".join(result.lines()), flush=True)


def main(argv: Optional[List[str]] = None) -> CompatibilityMatrix:
    """Run ``python -m aml.compat`` with ``argv``; returns the matrix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_torchrun(parser)
    try:
        datasets = checked_test_sets(args)
        specs = network_specs(args.networks)
        if not specs:
            raise ConfigError(f"--networks {' '.join(args.networks)!r} names no network; give one or more")
        labels = network_labels(args.labels, specs)
        if args.json and args.heatmap and os.path.realpath(args.json) == os.path.realpath(args.heatmap):
            raise ConfigError(f"--json and --heatmap are both {args.json}: the heatmap would replace the JSON")
        if args.heatmap and importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--heatmap draws with matplotlib, which is not installed: pip install matplotlib")
    except ValueError as err:
        parser.error(str(err))
    device = resolve_device(args.device, args.gpu_id)
    setup_logging()
    networks = {label: load_spec(spec, None, args.data_root) for label, spec in zip(labels, specs, strict=True)}
    check_distinct(networks)  # copies under other names: before the test sets are prepared
    for name in datasets:
        dataset, suffix = split_test_name(name)
        prepare_test_set(dataset, args.data_root, progress=not args.quiet)
        if suffix is not None:
            prepare_distractors(suffix, args.data_root, progress=not args.quiet)
    settings = TestSettings(
        datasets=tuple(datasets),
        image_size=args.image_size,
        scales=args.multiscale,
        whitening=args.whitening,
        extraction=extraction_from(args, str(device)),
        data_root=args.data_root,
        distractor_dtype=args.distractor_dtype,
        shard_size=args.shard_size,
    )
    start = time.time()
    matrix = compatibility_matrix(networks, settings, on_pair=_show_pair)
    seconds = time.time() - start
    print("\n" + format_matrices(matrix))
    if args.json:
        record = {
            **matrix.record(),
            "seconds": round(seconds, 1),
            "settings": {**vars(args), "networks": [s.given for s in specs], "labels": labels, "device": str(device)},
            "provenance": provenance(command_of("-m aml.compat", argv), device),
        }
        data = strict_json(record)
        atomic_write(Path(args.json), lambda out: out.write(data))
        print(f">> matrices written to {args.json}")
    if args.heatmap:
        draw_matrix(matrix, Path(args.heatmap), "whiten" if args.whitening else "plain")
        print(f">> heatmaps drawn in {args.heatmap}")
    return matrix


if __name__ == "__main__":
    run_cli(main)
