"""What the int8 student costs and saves: its asymmetric mAP on a test set next to the float32
student's (queries by the ONNX files through onnxruntime, database by the teacher), and the
time of one query image on this CPU."""

import json
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, TypedDict

import numpy as np

from aml.data.paths import DataRootLike, data_subdir
from aml.data.testsets import REPORTED_LEVELS, configdataset, prepare_test_set, query_and_database_paths
from aml.descriptors import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.onnx_student import describe_with_onnx, onnx_session, seconds_per_image
from aml.evaluation.metrics import evaluate_ranks
from aml.evaluation.ranking import rank_database
from aml.evaluation.whitening import whitenapply
from aml.networks.loading import LoadedNetwork
from aml.utils.types import PathLike

__all__ = ["INT8_REPORT", "TIMING_SIDES", "OnnxTestMaps", "is_int8_report", "onnx_test_maps", "onnx_timings"]

log = logging.getLogger(__name__)
TIMING_SIDES = (362, 1024)  # the longer side of the timed query images (the paper's test sizes)
INT8_REPORT = "int8.json"  # the export's --test-set report, beside the exported files


class OnnxTestMaps(TypedDict):
    """The mAP of exported students on a test set (`onnx_test_maps`), the body of ``int8.json``.

    Attributes:
        dataset: the test set.
        image_size: the longer side of the database images.
        queries: the number of queries.
        database: the number of database images.
        maps: per ONNX file, ``{"medium", "hard"}`` (revisited protocol) or ``{"map"}`` (classic).
        cosine: per ONNX file, the ``min`` and ``mean`` cosine of its query descriptors to the
            first file's.
    """

    dataset: str
    image_size: int
    queries: int
    database: int
    maps: Dict[str, Dict[str, float]]
    cosine: Dict[str, Dict[str, float]]


def is_int8_report(path: PathLike) -> bool:
    """Whether ``path`` holds an export's ``int8.json`` report (its provenance and report).

    Args:
        path: the file.

    Returns:
        True for a report an export wrote; False for anything else, or no file.

    Examples:
        >>> from aml.export.report import is_int8_report
        >>> is_int8_report("no/such/int8.json")
        False
    """
    try:
        record = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"provenance", "report"} <= set(record)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


def onnx_test_maps(
    files: Mapping[str, PathLike],
    teacher: LoadedNetwork,
    dataset: str,
    image_size: int,
    data_root: DataRootLike = None,
    whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
) -> OnnxTestMaps:
    """Asymmetric mAP of exported students on a test set: queries by each ONNX file, database by the teacher.

    The database is encoded once by the teacher (`aml.descriptors.describe_images`), whitened
    with ``whitening`` when the files have it folded in; each file encodes the cropped queries
    with onnxruntime; ranking and metrics are `aml.evaluation`'s.

    Args:
        files: name -> ONNX file, e.g. ``{"float32": ..., "int8": ...}``.
        teacher: the teacher.
        dataset: the test set (e.g. ``synth-oxford``, ``roxford5k``).
        image_size: the longer side of the database images and (as a factor) the query crops.
        data_root: the data root.
        whitening: the teacher's whitening folded into the files, applied to the database; None: none.
        config: how the teacher encodes the database.

    Returns:
        ``{"dataset", "image_size", "maps": {name: {"medium", "hard"} (revisited) or {"map"}},
        "cosine": {name: {"min", "mean"}}}``, the cosines of each file's query descriptors to the
        first file's.

    Examples:
        >>> from aml.export.report import onnx_test_maps
        >>> from aml.networks.loading import load_teacher
        >>> files = {"float32": "deploy/student.onnx", "int8": "deploy/student-int8.onnx"}
        >>> onnx_test_maps(files, load_teacher("vgg16"), "roxford5k", 1024)["maps"]["int8"]  # doctest: +SKIP
        {'medium': 0.62, 'hard': 0.36}
    """
    prepare_test_set(dataset, data_root)
    cfg = configdataset(dataset, data_subdir(data_root, "test"))
    images, queries, bbxs = query_and_database_paths(cfg)
    vecs = describe_images(teacher.net, images, image_size, config=config.but(desc=f"{dataset} database"))
    if whitening is not None:
        vecs = whitenapply(vecs, *whitening)
    maps: Dict[str, Dict[str, float]] = {}
    cosine: Dict[str, Dict[str, float]] = {}
    first: Optional[np.ndarray] = None
    for name, path in files.items():
        qvecs = describe_with_onnx(onnx_session(path), queries, image_size, bbxs, source=path)
        results = evaluate_ranks(rank_database(vecs, qvecs), cfg["gnd"], cfg["protocol"])
        maps[name] = (
            {level: float(results[level]["map"]) for level in REPORTED_LEVELS}
            if cfg["protocol"] == "revisited"
            else {"map": float(results["map"])}
        )
        first = qvecs if first is None else first
        cos = _cosines(first, qvecs)
        cosine[name] = {"min": float(cos.min()), "mean": float(cos.mean())}
        log.info(">> %s: %s queries by %s: mAP %s", dataset, name, path, maps[name])
    return {
        "dataset": dataset,
        "image_size": image_size,
        "queries": len(queries),
        "database": len(images),
        "maps": maps,
        "cosine": cosine,
    }


def onnx_timings(
    files: Mapping[str, PathLike], sides: Sequence[int] = TIMING_SIDES, repeats: int = 5, threads: int = 1
) -> Dict[str, Dict[str, float]]:
    """Seconds per query image of each ONNX file at each size, on this CPU.

    Images are 4:3 landscape with the given longer side; each time is the median of
    ``repeats`` runs after a warm-up (`aml.descriptors.onnx_student.seconds_per_image`).

    Args:
        files: name -> ONNX file.
        sides: the longer sides of the images.
        repeats: timed runs per file and size.
        threads: onnxruntime's ``intra_op_num_threads``.

    Returns:
        ``{name: {str(side): seconds}}``.

    Examples:
        >>> from aml.export.report import onnx_timings
        >>> onnx_timings({"int8": "deploy/student-int8.onnx"}, sides=(362,))  # doctest: +SKIP
        {'int8': {'362': 0.0154}}
    """
    timings: Dict[str, Dict[str, float]] = {}
    for name, path in files.items():
        session = onnx_session(path, threads=threads)
        timings[name] = {str(side): seconds_per_image(session, (side * 3 // 4, side), repeats) for side in sides}
    return timings
