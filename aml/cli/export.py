"""python -m aml.export: the student as TorchScript and ONNX, checked against PyTorch, and
optionally as int8 ONNX with a report of what int8 costs on a test set."""

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from aml.cli.arguments import (
    Parser,
    command_of,
    check_input_folders,
    folder,
    input_folder,
    one_line_errors,
    output_folder,
    positive_int,
    run_cli,
    setup_logging,
)
from aml.data.testsets import get_test_set
from aml.descriptors import ExtractionConfig
from aml.descriptors.onnx_student import read_onnx_metadata
from aml.evaluation.whitening_store import read_whitening_file
from aml.export import Int8Settings, export_student, int8_agreement, student_info
from aml.export.errors import ExportError
from aml.export.student import EXPORTED_FILES, check_export_folder
from aml.export.report import INT8_REPORT, OnnxTestMaps, is_int8_report, onnx_test_maps, onnx_timings
from aml.networks.loading import LoadedNetwork, NetworkSpec, load_spec, load_test_network, teacher_problem
from aml.reports.provenance import provenance
from aml.search import SearchDatabase, StoreError, check_teacher, list_images, open_database
from aml.search.store import store_holding, store_marker
from aml.utils.atomic import atomic_write, folder_lock
from aml.utils.text_files import strict_json
from aml.utils.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_IMAGE_SIZE = 1024
TIME_REPEATS = 5  # --time-repeats' default
AGREEMENT_IMAGES = 8  # images (held out of the calibration where any are) comparing int8 with float32
#: the int8 cosine to float32 below which the export warns (trained students: 0.985 and up, docs/search-export.md)
INT8_MIN_COSINE = 0.9


def export_folder(text: str) -> str:
    """The argparse ``type`` of --out: a `folder` that is not, nor lies in, a store's, whose
    next indexing would refuse the exported files as not a store's."""
    output_folder(text)
    store = store_holding(text)
    if store is not None:
        raise argparse.ArgumentTypeError(
            f"{text} is in the store {store} (it holds {store_marker(store)}): the exported files there would keep "
            "it from being indexed again; give another folder, e.g. a new one beside it"
        )
    try:
        check_export_folder(text)
    except ExportError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def build_parser() -> Parser:
    """The flags of ``python -m aml.export``."""
    parser = Parser(prog="python -m aml.export", description="Export a student for deployment (TorchScript + ONNX).")
    parser.add_argument("--network", "-npath", required=True, help="the student: a checkpoint path or a published name")
    parser.add_argument(
        "--out", required=True, type=export_folder, help="folder for student.pt and student.onnx (not a store's)"
    )
    whitening = parser.add_mutually_exclusive_group()
    whitening.add_argument(
        "--store",
        type=input_folder,
        default=None,
        help="the search store the student will query (python -m aml.search index): its teacher is checked, its "
        "whitening (-w) folded in, its image size the default --image-size",
    )
    whitening.add_argument("--whitening-file", default=None, help="fold in a whitening file ({'m', 'P'})")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="TorchScript only")
    parser.add_argument(
        "--teacher",
        "-t",
        default=None,
        help="the student's teacher (name or path), recorded in the ONNX files and encoding the "
        "--test-set database (default: the checkpoint's meta['teacher'])",
    )
    parser.add_argument("--int8", action="store_true", help="also write student-int8.onnx (needs --calibration)")
    parser.add_argument(
        "--calibration",
        default=None,
        type=input_folder,
        metavar="DIR",
        help="--int8: calibrate on the images of this folder (like the queries, e.g. a database's)",
    )
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="--int8: calibrate on at most N of them (evenly spread; default: all)",
    )
    parser.add_argument(
        "--image-size",
        "-imsize",
        type=positive_int,
        default=None,
        help="--int8: the longer side calibration (and --test-set) images are shrunk to (default: "
        f"the --store's image size, else {DEFAULT_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--test-set",
        default=None,
        metavar="NAME",
        help="--int8: report the asymmetric mAP of the int8 and float32 students on this test set "
        "(database by --teacher) and their time per query image, in OUT/int8.json",
    )
    parser.add_argument(
        "--time-repeats",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"--test-set: timed runs per file and image size (the median is reported; default: {TIME_REPEATS})",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        type=folder,
        help="where --test-set and published networks are found (default: $AML_DATA_ROOT or ./data)",
    )
    return parser


def _whitening(args, store: Optional[SearchDatabase], dim: int):
    """The whitening to fold in (--store's, None for a store without one, or --whitening-file's),
    checked for the student's ``dim``."""
    if store is not None:
        scales = list(store.settings["scales"])
        if scales != [1] and store.whitening is not None:  # learned on multi-scale descriptors
            raise StoreError(
                f"the store {args.store} is encoded at scales {scales}: its whitening belongs after the multi-scale "
                "mean, and an exported student encodes one scale; index a store at one scale to fold its whitening in"
            )
        if scales != [1]:  # search query refuses an exported student there
            raise StoreError(
                f"the store {args.store} is encoded at scales {scales}, and an exported student encodes one: query "
                "it with the student's checkpoint, or index a store at one scale"
            )
        return store.whitening
    if args.whitening_file:
        return read_whitening_file(args.whitening_file, dim)
    return None


def _replaced_input(args) -> Optional[str]:
    """Why the export would write over one of its own inputs (a checkpoint called
    ``student.pt`` in --out, say), or None."""
    kinds = ["torchscript"] + ["onnx"] * args.onnx + ["int8"] * args.int8
    names = [EXPORTED_FILES[kind] for kind in kinds] + [INT8_REPORT] * (args.test_set is not None)
    written = [Path(args.out) / name for name in names]
    inputs = (("--network", args.network), ("--teacher", args.teacher), ("--whitening-file", args.whitening_file))
    for flag, given in inputs:
        for path in written:
            if given and path.is_file() and Path(given).is_file() and path.samefile(given):
                return f"{flag} {given} is {path}, which the export writes: give another --out (it would be replaced)"
    return None


def _check_flags(parser: Parser, args) -> None:
    """The --int8 flags fit together, the calibration folder holds images and no input is a
    file the export writes (before anything is loaded); a refusal is one line naming the flag."""
    replaced = _replaced_input(args) or (teacher_problem(args.teacher) if args.teacher else None)
    if replaced:  # (the ONNX files would record a teacher that is none)
        parser.error(replaced)
    check_input_folders(parser, args, {"--store": "a store (python -m aml.search index writes one)"})
    if args.int8 and args.calibration is None:
        parser.error("--int8 needs --calibration DIR: a folder of images like the queries to calibrate on")
    if args.time_repeats is not None and args.test_set is None:
        parser.error("--time-repeats times the files of --test-set's report: add --test-set (and --int8)")
    if not args.int8:
        given = [
            flag
            for flag, value in (
                ("--calibration", args.calibration),
                ("--test-set", args.test_set),
                ("--calibration-images", args.calibration_images),
                ("--image-size", args.image_size),
            )
            if value is not None
        ]
        if given:
            parser.error(f"{given[0]} is for the int8 student: add --int8")
        return
    if args.test_set is not None:
        _check_report_target(parser, args)
    if not args.onnx:
        parser.error("--int8 quantizes the ONNX student: drop --no-onnx")
    check_input_folders(parser, args, {"--calibration": "images like the queries"})


def _calibration_folder(parser: Parser, args) -> List[str]:
    """The images of --calibration, listed once (an unreadable sub-folder is said once), or
    a one-line refusal when it holds none."""
    images = list_images(args.calibration)
    if not images:
        parser.error(
            f"--calibration {args.calibration} holds no images (.jpg, .png, ...); give a folder of images "
            "like the queries"
        )
    return images


def _check_report_target(parser: Parser, args) -> None:
    """--test-set names a test set, and its report would replace no file but an earlier report
    (checked before the export: the calibration and the export take minutes)."""
    try:
        get_test_set(args.test_set, args.data_root)
    except ConfigError as err:
        parser.error(f"--test-set: {err}")
    path = Path(args.out) / INT8_REPORT
    if path.exists() and not is_int8_report(path):
        parser.error(f"{path} exists and is not an earlier int8 report: it is not replaced; give another --out")


def _calibration(images: List[str], most: Optional[int], image_size: int) -> Int8Settings:
    """The calibration images (at most ``most`` of ``images``, evenly spread) at ``image_size``."""
    if most is not None and most < len(images):
        images = [images[int(i)] for i in np.linspace(0, len(images) - 1, most)]
    return Int8Settings(tuple(images), image_size)


def _agreement_images(images: List[str], int8: Int8Settings) -> Tuple[List[str], str]:
    """At most `AGREEMENT_IMAGES` of --calibration's ``images`` to compare the int8 descriptors
    with float32's on, evenly spread, and which they are: those left out of the calibration
    ("held-out") when --calibration-images left some out, else calibration images."""
    calibrated = set(int8.calibration)
    held_out = [image for image in images if image not in calibrated]
    chosen, which = (held_out, "held-out") if held_out else (list(int8.calibration), "calibration")
    count = min(AGREEMENT_IMAGES, len(chosen))
    return [chosen[int(i)] for i in np.linspace(0, len(chosen) - 1, count)], which


def _teacher(args, student: LoadedNetwork) -> Tuple[Optional[str], Optional[LoadedNetwork]]:
    """The teacher as named, and the teacher itself when it is on this machine (a checkpoint) or
    needed for --test-set."""
    given = args.teacher or student.recorded_teacher
    if given is None and args.test_set is not None:
        raise ConfigError(
            "--test-set encodes the database with the student's teacher, which the checkpoint does "
            "not record: give --teacher"
        )
    spec = NetworkSpec.parse(given) if given is not None else None
    if spec is not None and (args.test_set is not None or spec.local_file is not None):
        return given, load_spec(spec, None, args.data_root)
    return given, None


def _check_trained_against(args, student: LoadedNetwork, teacher: Optional[LoadedNetwork]) -> None:
    """Refuse a --teacher whose weights are not those the student was trained against (the
    files would record it, and a store that teacher encoded would take the student's queries),
    and a --test-set against the recorded teacher when its file now holds other weights."""
    recorded = student.net.meta.get("teacher_fingerprint")
    if args.teacher and teacher is not None and recorded is not None and teacher.fingerprint != recorded:
        raise ConfigError(
            f"{student.name} was trained against the teacher weights {recorded[:8]}, but --teacher {args.teacher} "
            f"holds {teacher.fingerprint[:8]}: the exported files would record a teacher it was not trained "
            "against; give that teacher's checkpoint, or leave --teacher out"
        )
    if (
        not args.teacher
        and args.test_set is not None
        and teacher is not None
        and recorded not in (None, teacher.fingerprint)
    ):
        raise ConfigError(  # as test.py --asym refuses it: the report would measure another teacher's database
            f"{student.name} was trained against the weights {recorded[:8]} of its teacher {student.recorded_teacher}, "
            f"but {teacher.name} now holds {teacher.fingerprint[:8]}: the file was replaced, and --test-set would "
            "measure another teacher's database; give --teacher the one it was trained against"
        )
    if args.teacher and (teacher is None or recorded is None):  # no weights to check: by name and dimension
        given, named = NetworkSpec.parse(args.teacher), student.recorded_teacher
        dim = given.dimension() if teacher is None else int(teacher.net.meta["outputdim"])
        ours = int(student.net.meta["outputdim"])
        if dim is not None and dim != ours:
            raise ConfigError(
                f"--teacher {args.teacher} gives {dim}-d descriptors, {student.name} {ours}-d ones: it is not its "
                "teacher; leave --teacher out, or give the one it was trained against"
            )
        if named is not None and given.local_file is None and NetworkSpec.parse(named).name != given.name:
            raise ConfigError(
                f"{student.name} was trained against {named}, not --teacher {args.teacher}: the exported files "
                "would record a teacher it was not trained against; leave --teacher out"
            )


class Int8Report(OnnxTestMaps):
    """``int8.json``'s report: the mAPs of the float32 and int8 files, the seconds per query
    image of each at each timed size, the teacher that encoded the database (its name and
    fingerprint), and what each file measured is (its aml metadata: the student's and its
    teacher's fingerprints, the whitening's digest, the calibration), which ties the report to
    the files after they are moved or the student's checkpoint is written over."""

    seconds_per_image: Dict[str, Dict[str, float]]
    teacher: str
    teacher_fingerprint: str
    files: Dict[str, Dict[str, str]]


def _metadata(path: Path) -> Dict[str, str]:
    """An exported file's aml metadata (what it is), as its ``metadata_props`` hold it."""
    info = read_onnx_metadata(path)
    assert info is not None  # written by this export
    return info.props()


def _report(
    args, files: Dict[str, Path], teacher: LoadedNetwork, image_size: int, whitening, command: Optional[List[str]]
) -> Int8Report:
    onnx = {"float32": files["onnx"], "int8": files["int8"]}
    maps = onnx_test_maps(
        onnx, teacher, args.test_set, image_size, args.data_root, whitening, ExtractionConfig(workers=0, device="cpu")
    )
    report: Int8Report = {
        **maps,
        "seconds_per_image": onnx_timings(onnx, repeats=args.time_repeats or TIME_REPEATS),
        "teacher": teacher.name,
        "teacher_fingerprint": teacher.fingerprint,
        "files": {name: _metadata(path) for name, path in onnx.items()},
    }
    record = {"provenance": provenance(command, device="cpu"), "report": report}  # ONNX Runtime on the CPU
    path = Path(args.out) / INT8_REPORT
    data = strict_json(record) + b"\n"
    atomic_write(path, lambda out: out.write(data))
    for name in onnx:
        levels = ", ".join(f"{level} {100 * value:.2f}" for level, value in report["maps"][name].items())
        times = ", ".join(f"{side} px {1e3 * t:.1f} ms" for side, t in report["seconds_per_image"][name].items())
        print(
            f">> {args.test_set} mAP, {name} queries, database by {teacher.name}: {levels}; per query image "
            f"(1 thread): {times}"
        )
    print(f">> report: {path}")
    return report


def main(argv: Optional[List[str]] = None) -> Dict[str, Path]:
    """Export, check, print the files and the max abs differences; returns the files."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    setup_logging(verbose=False)
    calibration_folder = _calibration_folder(parser, args) if args.int8 else []
    with one_line_errors(), contextlib.ExitStack() as held:
        student = load_test_network(args.network, None, None, args.data_root)
        store = open_database(args.store) if args.store else None
        if store is not None:  # its whitening is the teacher's: folded into another teacher's student, it is noise
            check_teacher(store, student.net, args.teacher or student.recorded_teacher, args.data_root)
        whitening = _whitening(args, store, student.net.meta["outputdim"])
        spec, teacher = _teacher(args, student)
        image_size = args.image_size or (store.settings["image_size"] if store is not None else DEFAULT_IMAGE_SIZE)
        int8 = _calibration(calibration_folder, args.calibration_images, image_size) if args.int8 else None
        # the teacher's weights as training recorded them, else as its checkpoint here holds them
        recorded = student.net.meta.get("teacher_fingerprint")
        _check_trained_against(args, student, teacher)
        teacher_fingerprint = recorded or (teacher.fingerprint if teacher else None)
        info = student_info(student.net, student.name, spec, teacher_fingerprint, whitening)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)  # two exports into one folder take turns, report included
        held.enter_context(folder_lock(out, fix="give another --out", beside=True))
        files, diffs = export_student(student.net, args.out, whitening, onnx=args.onnx, info=info, int8=int8)
        for kind, path in files.items():
            if kind == "int8" and int8 is not None:
                images, which = _agreement_images(calibration_folder, int8)
                agreement = int8_agreement(files["onnx"], path, images, image_size)
                check = (
                    f"cosine to float32 on {len(images)} {which} images: "
                    f"min {agreement['min']:.4f}, mean {agreement['mean']:.4f}"
                )
                if agreement["min"] < INT8_MIN_COSINE:
                    print(
                        f">> warning: the int8 student's descriptors are far from float32's (cosine down to "
                        f"{agreement['min']:.4f}, below {INT8_MIN_COSINE}): its rankings will differ; calibrate on "
                        "more images like the queries (--calibration), at the store's --image-size, or deploy "
                        "student.onnx"
                    )
            else:
                check = (
                    f"max abs diff to PyTorch {diffs[kind]:.2e}" if kind in diffs else "not checked (no onnxruntime)"
                )
            print(f">> {kind}: {path} ({check})")
        if args.test_set is not None:
            assert teacher is not None  # --test-set loads it (_teacher)
            _report(args, files, teacher, image_size, whitening, command_of("-m aml.export", argv))
    return files


if __name__ == "__main__":
    run_cli(main)
