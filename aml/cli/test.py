"""test.py: symmetric and asymmetric evaluation on the revisited Oxford/Paris protocol."""

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from aml.cli.arguments import (
    Parser,
    command_of,
    add_extraction_arguments,
    add_reranking_arguments,
    add_runtime_arguments,
    add_test_set_arguments,
    add_worker_arguments,
    checked_test_sets,
    extraction_from,
    results_folder,
    output_file_of,
    positive_int,
    reranking_from,
    run_cli,
    setup_logging,
)
from aml.data.distractors import prepare_distractors, split_test_name
from aml.data.paths import resolve_data_root
from aml.data.testsets import prepare_test_set
from aml.evaluation.reranking import Reranking
from aml.evaluation.plan import TestSettings, check_reranking
from aml.evaluation.testing import evaluate
from aml.networks.loading import LoadedNetwork, NetworkSpec, Source, load_spec, load_teacher, load_test_network
from aml.networks.pretrained import DEFAULT_TEACHER, PRETRAINED
from aml.networks.retrieval_net import multiscale_power
from aml.reports.provenance import provenance
from aml.utils.atomic import atomic_write
from aml.utils.errors import ConfigError
from aml.utils.text_files import strict_json
from aml.utils.devices import resolve_device
from aml.utils.distributed import init_from_environment, main_first, process_device, warn_once

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The original test.py flags (names, aliases, defaults) plus --data-root, --device, --results, re-ranking."""
    parser = Parser(description="Evaluate a retrieval network, symmetrically or asymmetrically.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--network-path",
        "-npath",
        metavar="NETWORK",
        help="a name of the pretrained list (see --list-pretrained) or a checkpoint file",
    )
    group.add_argument(
        "--network-offtheshelf",
        "-noff",
        metavar="NETWORK",
        help="off-the-shelf network 'ARCH-POOL' with optional '-reg', '-lwhiten', '-whiten'",
    )
    group.add_argument("--list-pretrained", action="store_true", help="print the pretrained list and exit")
    add_test_set_arguments(parser)
    add_reranking_arguments(parser)
    add_worker_arguments(parser)
    parser.add_argument(
        "--teacher",
        "-t",
        default=None,
        metavar="TEACHER",
        help="vgg16 | resnet101 (published teachers) or a checkpoint path; the database "
        "encoder with --asym (default: the teacher the network records, else vgg16); the recorded "
        "teacher is refused where its file now holds other weights than the network was trained "
        "against, another --teacher is tested with a warning (the numbers then measure two networks' "
        "compatibility)",
    )
    parser.add_argument(
        "--asym", action="store_true", help="asymmetric testing: teacher encodes the database, the network the queries"
    )
    parser.add_argument(
        "--results",
        metavar="FILE",
        default=None,
        type=output_file_of("JSON"),
        help="write every number and the settings as JSON",
    )
    add_extraction_arguments(parser)
    parser.add_argument("--no-cache", action="store_true", help="do not cache database descriptors")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images instead of stopping: skipped database images rank last, "
        "skipped queries are left out; the list goes next to --results (else --report, else "
        "the data set's folder) as skipped_<dataset>.txt",
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        default=None,
        type=results_folder,
        help="write a visual ranking report per data set to DIR/<dataset>/index.html (+ a PNG per "
        "query); with --asym the teacher's own ranking is shown beside the network's",
    )
    parser.add_argument(
        "--report-top",
        default=10,
        type=positive_int,
        metavar="K",
        help="database images shown per query in --report (default: 10)",
    )
    add_runtime_arguments(parser)
    return parser


def _skipped_dir(args: argparse.Namespace) -> Optional[Path]:
    if args.results:
        return Path(args.results).resolve().parent
    return Path(args.report) if args.report else None


def _load_networks(args: argparse.Namespace, datasets: List[str]):
    """The tested network, the teacher (None without --asym), and the test sets in place
    (downloaded if needed; run by rank 0 first under torchrun)."""
    student = load_test_network(args.network_path, args.network_offtheshelf, args.teacher, args.data_root)
    if args.teacher and not args.asym:
        warn_once(
            log,
            ">> --teacher %s without --asym: the test is symmetric (%s encodes the database too); the teacher only "
            "gives the dimension of a checkpoint of the original that records none. Add --asym to encode the "
            "database with it",
            args.teacher,
            student.name,
        )
    teacher = _load_teacher(args, student) if args.asym else None
    for name_of_set in datasets:
        dataset, suffix = split_test_name(name_of_set)
        prepare_test_set(dataset, args.data_root, progress=not args.quiet)
        if suffix is not None:
            prepare_distractors(suffix, args.data_root, progress=not args.quiet)
    return student, teacher


def _load_teacher(args: argparse.Namespace, student: LoadedNetwork) -> LoadedNetwork:
    """--teacher, else the teacher the network records (`LoadedNetwork.recorded_teacher`), else
    vgg16. The recorded teacher must still be the weights the network was trained against
    (its ``meta['teacher_fingerprint']``); a --teacher of other weights is tested, with a
    warning that it measures two networks' compatibility, not the student's own."""
    recorded, trained_against = student.recorded_teacher, student.net.meta.get("teacher_fingerprint")
    if args.teacher is None and recorded is not None:
        spec = NetworkSpec.parse(recorded)
        if spec.source is Source.CHECKPOINT and spec.local_file is None:
            raise ConfigError(
                f"{student.name} records the teacher {recorded!r}, which is not a file here (a path as its "
                "training gave it); give --teacher (its checkpoint)"
            )
        teacher = load_spec(spec, None, args.data_root)
    else:
        teacher = load_teacher(args.teacher or DEFAULT_TEACHER, args.data_root)
    if trained_against is None or trained_against == teacher.fingerprint:
        return teacher
    if args.teacher is None:
        raise ConfigError(
            f"{student.name} was trained against the weights {trained_against} of its teacher {recorded}, but "
            f"{teacher.name} now holds {teacher.fingerprint}: the file was replaced; give --teacher the one it "
            "was trained against"
        )
    warn_once(
        log,
        ">> %s was trained against another teacher (%s, weights %s) than %s (weights %s): this measures how "
        "compatible the two are, not the student's asymmetric mAP",
        student.name,
        recorded,
        trained_against,
        teacher.name,
        teacher.fingerprint,
    )
    return teacher


def _multiscale_lines(scales: List[float], student: LoadedNetwork, teacher: Optional[LoadedNetwork]) -> str:
    """The original's lines of the scales and of the power that averages them (msp), with the
    teacher's own msp for its database (see docs/differences.md)."""
    shown = [int(s) if float(s).is_integer() else s for s in scales]  # [1, 0.7071067811865476, 0.5]
    lines = [">> Set-up multiscale:", f">>>> ms: {shown}", f">>>> msp: {multiscale_power(student.net, scales):g}"]
    if teacher is not None:
        lines.append(f">>>> msp of the teacher's database: {multiscale_power(teacher.net, scales):g}")
    return "\n".join(lines)


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tuple[List[str], Reranking]:
    """The test sets and the re-ranking the flags ask for, or the parser's one-line error."""
    try:
        datasets = checked_test_sets(args)
        if args.report and any(split_test_name(name)[1] for name in datasets):
            raise ValueError(
                "--report draws full rankings, which a distractor set makes too long; run --report "
                "without the '+' suffix"
            )
        reranking = reranking_from(args)
        check_reranking(reranking, datasets, args.data_root, sizes=False)  # the sizes come once the sets are in
    except ValueError as err:
        parser.error(str(err))
    return datasets, reranking


def _settings(
    args: argparse.Namespace, datasets: List[str], device: torch.device, reranking: Reranking
) -> TestSettings:
    """How to test, from the flags."""
    return TestSettings(
        datasets=tuple(datasets),
        image_size=args.image_size,
        scales=args.multiscale,
        whitening=args.whitening,
        extraction=extraction_from(args, str(device)).but(skip_bad=args.skip_bad_images),
        data_root=args.data_root,
        cache=not args.no_cache,
        skipped_dir=_skipped_dir(args),
        report_dir=Path(args.report) if args.report else None,
        report_top=args.report_top,
        distractor_dtype=args.distractor_dtype,
        shard_size=args.shard_size,
        reranking=reranking,
    )


def _write_results(
    args: argparse.Namespace,
    device: torch.device,
    networks: Tuple[LoadedNetwork, Optional[LoadedNetwork]],
    results: dict,
    command: Optional[List[str]] = None,
) -> None:
    """``--results``: the flags, the networks, the numbers and where they were measured (machine,
    versions, date, ``command``: None, this process's) as one JSON file (written whole or not at all)."""
    student, teacher = networks
    report = {
        "settings": {
            **vars(args),
            "data_root": str(resolve_data_root(args.data_root)),  # from $AML_DATA_ROOT too
            "device": str(device),
            "network": student.name,
            "teacher": teacher.name if teacher else None,
            # which weights were tested: a file replaced under the same name gives other numbers
            "network_fingerprint": student.fingerprint,
            "teacher_fingerprint": teacher.fingerprint if teacher else None,
        },
        "results": results,
        "provenance": provenance(command, device),
    }
    data = strict_json(report)
    atomic_write(args.results, lambda out: out.write(data))
    print(f">> results written to {args.results}")


def main(argv: Optional[List[str]] = None) -> dict:
    """Run test.py with ``argv``; returns the results dict."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_pretrained:
        for entry in PRETRAINED.values():
            print(f"{entry.name:45s} {entry.kind:8s} {entry.teacher or '-':10s} {entry.url}")
        return {}
    datasets, reranking = _checked(parser, args)
    requested = resolve_device(args.device, args.gpu_id)
    world = init_from_environment(requested, args.dist_timeout)
    setup_logging(verbose=world.is_main)
    say = print if world.is_main else (lambda *a, **k: None)  # rank 0 prints the results
    device = process_device(requested, world)
    student, teacher = main_first(world, lambda: _load_networks(args, datasets))
    try:
        # the sizes of the test sets, now on disk, and the dimension of the database's descriptors
        check_reranking(reranking, datasets, args.data_root, dim=(teacher or student).net.meta["outputdim"])
    except ValueError as err:
        parser.error(str(err))
    kind = "off-the-shelf network" if args.network_offtheshelf else "network"
    say(f">> Loading {kind}:\n>>>> '{args.network_path or args.network_offtheshelf}'")
    say(">>>> loaded network: ")
    say(student.net.meta_repr())
    if teacher is not None:
        say(f">> Asymmetric testing: database by teacher '{teacher.name}', queries by '{student.name}'")
    say(_multiscale_lines(list(args.multiscale), student, teacher))
    tested = evaluate(
        student,
        _settings(args, datasets, device, reranking),
        teacher,
        on_result=lambda result: say("\n".join(result.lines()), flush=True),
    )
    results = {name: result.record() for name, result in tested.items()}
    if args.results and world.is_main:
        _write_results(args, device, (student, teacher), results, command_of("test.py", argv))
    return results


if __name__ == "__main__":
    run_cli(main)
