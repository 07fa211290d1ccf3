"""python -m aml.search: index a folder with the teacher, query it with the student."""

import argparse
import json
import math
from pathlib import Path
from typing import Any, List, Optional

from aml.cli.arguments import (
    Parser,
    add_reranking_arguments,
    add_runtime_arguments,
    refuse_torchrun,
    check_input_folders,
    input_folder,
    output_folder,
    nonnegative_int,
    extraction_from,
    one_line_errors,
    output_file_of,
    parse_scales,
    positive_int,
    reranking_from,
    run_cli,
    setup_logging,
)
from aml.data.images import ImageLoadError
from aml.data.paths import DataRoot
from aml.descriptors.store import open_store
from aml.utils.atomic import atomic_write
from aml.evaluation.reranking import Reranking
from aml.evaluation.whitening_store import WhiteningRequest, get_whitening
from aml.networks.loading import load_teacher, load_test_network
from aml.utils.devices import resolve_device
from aml.search import (
    IvfPq,
    StoreError,
    build_store,
    check_store_folder,
    list_images,
    open_database,
    query_database,
    query_database_onnx,
)
from aml.search.store import search_record


def _box(text: str) -> List[float]:
    try:
        box = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: four numbers x1,y1,x2,y2") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[0] >= box[2] or box[1] >= box[3]:
        raise argparse.ArgumentTypeError(f"--box {text!r}: four finite numbers x1,y1,x2,y2 with x1 < x2 and y1 < y2")
    return box


def _ivfpq(text: str) -> IvfPq:
    try:
        nlist, m = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ivfpq {text!r}: two positive integers NLIST,M, e.g. 1024,64") from None
    if nlist < 1 or m < 1:
        raise argparse.ArgumentTypeError(f"--ivfpq {text!r}: two positive integers NLIST,M, e.g. 1024,64")
    return IvfPq(nlist, m)


def _add_index_command(commands: Any) -> argparse.ArgumentParser:
    """The ``index`` subcommand and its own flags (those it shares with ``query`` come after)."""
    index = commands.add_parser("index", help="encode a folder or image list with the teacher into a store")
    index.add_argument("images", help="a folder (every image below it) or a text file of image paths")
    index.add_argument("--store", required=True, type=output_folder, help="the store folder to write")
    index.add_argument(
        "--teacher",
        "-t",
        default="vgg16",
        help="vgg16 | resnet101 | a name of the published list | timm:MODEL-POOL (a timm model with its released "
        "weights) | a checkpoint path (default: vgg16)",
    )
    index.add_argument(
        "--image-size",
        "-imsize",
        type=positive_int,
        default=1024,
        help="longer side of the images encoded; queries use the store's (default: 1024)",
    )
    index.add_argument(
        "--multiscale",
        "-ms",
        type=parse_scales,
        default="[1]",
        help="scales, e.g. '[1, 1/2**(1/2), 1/2]'; queries use the store's (default: '[1]')",
    )
    index.add_argument("--whitening", "-w", default=None, help="learn (or read) the teacher's whitening on this set")
    index.add_argument(
        "--ivfpq",
        type=_ivfpq,
        default=None,
        metavar="NLIST,M",
        help="also build a faiss IVF-PQ index (NLIST lists, M sub-quantisers) and print its recall@10",
    )
    index.add_argument(
        "--replace",
        action="store_true",
        help="replace a store of other images, teacher weights, image size or scales in --store (refused otherwise)",
    )
    index.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="index around images that cannot be read (missing, corrupt, not images; the whitening set's "
        "too): they are never found; otherwise the first one stops the indexing",
    )
    add_reranking_arguments(index, qe=False, superglobal=False)
    return index


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m aml.search index`` and ``query``."""
    parser = Parser(prog="python -m aml.search", description="Asymmetric search: teacher database, student queries.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    index = _add_index_command(commands)
    query = commands.add_parser("query", help="encode query images with the student and search a store")
    query.add_argument("images", nargs="+", help="query images")
    query.add_argument("--store", required=True, type=input_folder, help="the store folder written by index")
    student = query.add_mutually_exclusive_group(required=True)
    student.add_argument("--network", "-npath", help="the student: a checkpoint path or a published name")
    student.add_argument(
        "--onnx",
        default=None,
        metavar="FILE",
        help="the student exported by python -m aml.export (student.onnx or student-int8.onnx), run with onnxruntime",
    )
    query.add_argument(
        "--teacher",
        "-t",
        default=None,
        help="the student's teacher, when neither its checkpoint nor the published list records it (name or path)",
    )
    query.add_argument("--box", type=_box, default=None, help="x1,y1,x2,y2 crop of the (single) query image")
    query.add_argument("-k", type=positive_int, default=10, help="results per query (default: 10)")
    query.add_argument(
        "--json", type=output_file_of("JSON"), default=None, metavar="FILE", help="write the results as JSON"
    )
    add_reranking_arguments(query, dba=False)
    for sub in (index, query):
        sub.add_argument(
            "--workers",
            "-j",
            type=nonnegative_int,
            default=4,
            help="image loading workers; on the CPU at most the cores torch's threads leave free (default: 4)",
        )
        sub.add_argument("--gpu-id", "-g", default="0", help="GPU id used with --device auto (default: 0)")
        add_runtime_arguments(sub, distributed=False)
    return parser


def _index(args, reranking: Reranking) -> Path:
    device = str(resolve_device(args.device, args.gpu_id))
    teacher = load_teacher(args.teacher, args.data_root)
    images = list_images(args.images, name_left_out=True)
    if not images:
        raise StoreError(f"{args.images} holds no images")
    extraction = extraction_from(args, device).but(skip_bad=args.skip_bad_images)
    if not args.replace:  # before the whitening is learned
        check_store_folder(args.store, teacher, images, args.image_size, args.multiscale, extraction)
    whitening = None
    if args.whitening:
        request = WhiteningRequest(
            args.whitening, args.image_size, tuple(args.multiscale), extraction, DataRoot.resolve(args.data_root)
        )
        whitening = get_whitening(teacher, request)
    try:
        store = build_store(
            teacher,
            images,
            args.store,
            args.image_size,
            args.multiscale,
            whitening,
            extraction,
            reranking,
            args.ivfpq,
            replace=args.replace,
        )
    except ImageLoadError as err:
        raise ImageLoadError(
            f"{err}; or leave it out of the images, or index around it with --skip-bad-images"
        ) from None
    skipped = len(open_store(store).skipped())
    print(
        f">> {len(images) - skipped} images indexed by {teacher.name} into {store}"
        + (f", augmented with DBA ({reranking.label()})" if reranking.dba else "")
        + (f"; {skipped} unreadable, never found (listed in {store / 'skipped.txt'})" if skipped else "")
    )
    if args.ivfpq:
        recall = search_record(store)["ivfpq"]["recall"]  # not the descriptors, read again
        print(
            f">> IVF-PQ index ({args.ivfpq.nlist} lists, {args.ivfpq.m} sub-quantisers): recall@10 of held-out "
            "database images against exact "
            f"search {recall:.3f}"
        )
    return store


def _query(args, reranking: Reranking) -> List[Any]:
    if args.box is not None and len(args.images) != 1:
        raise StoreError("--box crops a single query image; give one image with it")
    database = open_database(args.store)
    bbxs = [args.box] if args.box else None
    if args.onnx:
        if args.teacher:
            raise StoreError(
                f"--teacher is for --network: {args.onnx} records its teacher (python -m aml.export --teacher)"
            )
        return _said(query_database_onnx(database, args.onnx, args.images, args.k, bbxs, reranking), args.json)
    device = str(resolve_device(args.device, args.gpu_id))
    loaded = load_test_network(args.network, None, None, args.data_root)
    config = extraction_from(args, device)
    teacher = args.teacher or loaded.recorded_teacher
    results = query_database(database, loaded.net, args.images, args.k, bbxs, config, reranking, teacher)
    return _said(results, args.json)


def _said(results: List[Any], json_file: Optional[str]) -> List[Any]:
    """``results`` printed, and written to ``json_file`` when one is given (--json)."""
    for entry in results:
        print(f">> {entry['query']}")
        for rank, hit in enumerate(entry["results"], start=1):
            print(f"{rank:4d}  {hit['score']:.4f}  {hit['image']}")
    if json_file:
        atomic_write(json_file, lambda out: out.write(json.dumps(results, indent=1).encode()))
    return results


def main(argv: Optional[List[str]] = None) -> Any:
    """``index``: returns the store folder; ``query``: the results."""
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_torchrun(parser)
    try:  # parsed once, refused as a flag's error before any work
        reranking = reranking_from(args)
    except ValueError as err:
        parser.error(str(err))
    if args.command == "query":
        check_input_folders(parser, args, {"--store": "a store (python -m aml.search index writes one)"})
    setup_logging(verbose=False)
    with one_line_errors():
        return _index(args, reranking) if args.command == "index" else _query(args, reranking)


if __name__ == "__main__":
    run_cli(main)
