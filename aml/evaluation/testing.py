"""The test pipeline behind test.py: symmetric and asymmetric retrieval on test sets,
with optional learned whitening, returning every number as a dict.

Asymmetric testing: the database is encoded by the teacher, the (cropped) queries by the
student; with whitening, the teacher's whitening applies to both sides. Each network
uses its own mean/std and its own multi-scale power.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.data.paths import data_subdir
from aml.data.distractors import DISTRACTOR_SETS, distractor_images, split_test_name
from aml.data.testsets import configdataset, prepare_test_set, query_and_database_paths
from aml.descriptors import DescriptorKey, ExtractionConfig, cached_descriptors, describe_images
from aml.descriptors.store import DescriptorStore, StoreKey, encode_into_store
from aml.evaluation.metrics import evaluate_ranks, format_results
from aml.evaluation.search import positions_with_distractors, rank_database
from aml.evaluation.whitening import whitenapply
from aml.evaluation.whitening_store import get_whitening
from aml.networks.loading import LoadedNetwork
from aml.utils.distributed import current_world

log = logging.getLogger(__name__)


@dataclass
class TestSettings:
    """Everything test.py's flags decide besides the networks."""

    __test__ = False  # not a pytest test class, despite its name
    datasets: Sequence[str] = ("roxford5k", "rparis6k")
    image_size: int = 1024
    scales: Sequence[float] = (1,)
    whitening: Optional[str] = None
    workers: int = 8
    device: str = "cpu"
    batch_size: Optional[int] = None
    amp: Optional[bool] = None  # autocast at extraction (None: on CUDA only)
    amp_dtype: str = "float16"  # its dtype (aml.descriptors.extraction.AMP_DTYPES)
    decode: str = "auto"  # where images are decoded (aml.descriptors.DECODINGS; auto: the device on CUDA)
    compile: bool = False  # torch.compile the networks for extraction
    data_root: Optional[str] = None
    cache: bool = True
    progress: bool = False  # tqdm bars (stderr) while extracting
    skip_bad: bool = False  # skip unreadable images (listed in skipped_dir) instead of stopping
    skipped_dir: Optional[Path] = None  # where skipped_<dataset>.txt goes (default: the data set's folder)
    report_dir: Optional[Path] = None  # write the visual ranking report there
    report_top: int = 10
    distractor_dtype: str = "float32"  # of the distractor store (float16 halves its disk and reads)
    shard_size: int = 16384  # images per distractor shard

    def extraction(self) -> ExtractionConfig:
        """How the test images are encoded."""
        return ExtractionConfig(workers=self.workers, device=self.device, batch_size=self.batch_size, amp=self.amp,
                                amp_dtype=self.amp_dtype, decode=self.decode, compile=self.compile,
                                progress=self.progress, skip_bad=self.skip_bad)


def htime(seconds: float) -> str:
    """'1h 0m 5s' / '42s', dropping leading zero units (the original's format)."""
    seconds = int(round(seconds))
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    parts, started = [], False
    for suffix, size in units:
        value, seconds = divmod(seconds, size)
        if value or started or suffix == "s":
            started = True
            parts.append(f"{value}{suffix}")
    return " ".join(parts)


def _search(database: np.ndarray, queries: np.ndarray, cfg: Dict[str, Any], gnd: List[Dict[str, Any]], device: str,
            excluded: Sequence[int] = ()) -> Tuple[Dict[str, Any], np.ndarray]:
    ranks = rank_database(database, queries, device=device, excluded=excluded)
    return evaluate_ranks(ranks, gnd, cfg["protocol"]), ranks


def _search_with_distractors(database: np.ndarray, queries: np.ndarray, cfg: Dict[str, Any], gnd: List[Dict[str, Any]],
                             device: str, excluded: Sequence[int], store: DescriptorStore, lw=None) -> Dict[str, Any]:
    """The numbers of the test set with the store's distractors added to its database."""
    transform = (lambda x: whitenapply(x, *lw)) if lw is not None else None
    places = positions_with_distractors(database, queries, store.blocks(), device, excluded, store.skipped(), transform)
    return evaluate_ranks(places, gnd, cfg["protocol"], positions=True)


def distractor_store(suffix: str, encoder: LoadedNetwork, settings: TestSettings) -> DescriptorStore:
    """The distractor set ``suffix`` encoded by ``encoder`` (once per network and settings:
    shared by every test set and by every student tested against this teacher)."""
    descriptors = DescriptorKey.of(encoder.net, settings.image_size, settings.scales, settings.extraction(),
                                   encoder.fingerprint)
    key = StoreKey(descriptors, encoder.name, settings.distractor_dtype, settings.shard_size)
    name = DISTRACTOR_SETS[suffix].folder
    tag = f"imsize{settings.image_size}_{settings.distractor_dtype}_{key.tag()}"
    folder = data_subdir(settings.data_root, "features") / "distractors" / f"{name}_{encoder.fingerprint}_{tag}"
    images = distractor_images(suffix, settings.data_root, settings.progress)
    # each process encodes its own shards
    config = settings.extraction().but(progress=settings.progress and current_world().is_main, desc=f"{name} shard")
    log.info(">> %s: %d distractors, descriptors by %s in %s", name, len(images), encoder.name, folder)
    return encode_into_store(encoder.net, images, folder, key, config)


@dataclass
class _TestSet:
    """One test set as read from its gnd file: its configuration, database images, queries and
    their boxes."""

    name: str
    cfg: Dict[str, Any]
    images: List[str]
    queries: List[str]
    bbxs: List[Any]

    @classmethod
    def read(cls, dataset: str, data_root: Optional[str]) -> "_TestSet":
        cfg = configdataset(dataset, data_subdir(data_root, "test"))
        return cls(dataset, cfg, *query_and_database_paths(cfg))


@dataclass
class _Encoded:
    """One data set's descriptors: database by the database encoder, queries by the tested
    one, and the images skipped (unreadable, with ``skip_bad``)."""

    vecs: np.ndarray
    qvecs: np.ndarray
    skipped_db: List[int]
    skipped_queries: List[int]


def _write_skipped(test: _TestSet, encoded: _Encoded, settings: TestSettings, dataset_dir: Path) -> Path:
    folder = Path(settings.skipped_dir) if settings.skipped_dir is not None else dataset_dir
    path = folder / f"skipped_{test.name}.txt"
    if not current_world().is_main:  # rank 0 writes it
        return path
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"database\t{test.images[i]}" for i in sorted(encoded.skipped_db)]
    lines += [f"query\t{test.queries[i]}" for i in sorted(encoded.skipped_queries)]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _query_aps(results: Dict[str, Any], kept: Sequence[int], nq: int) -> List[Optional[float]]:
    """Per-query AP (Medium for the revisited protocol) indexed by the original query number."""
    aps = results["medium"]["aps"] if "medium" in results else results["aps"]
    out: List[Optional[float]] = [None] * nq
    for q, ap in zip(kept, aps):
        out[q] = None if ap is None or np.isnan(ap) else float(ap)
    return out


def _report(test: _TestSet, encoded: _Encoded, kept: List[int], ranks: np.ndarray, results: Dict[str, Any],
            student: LoadedNetwork, teacher: Optional[LoadedNetwork], settings: TestSettings) -> Path:
    """The visual ranking report of one data set (with the teacher's own ranking when asymmetric)."""
    from aml.reports.ranking import Ranking, write_report

    dataset, cfg, images, queries, bbxs = test.name, test.cfg, test.images, test.queries, test.bbxs
    top = min(settings.report_top, ranks.shape[0])
    student_aps = _query_aps(results, kept, len(queries))
    rows: List[List[Ranking]] = [[] for _ in queries]
    for column, q in enumerate(kept):
        indices = ranks[:top, column]
        scores = encoded.vecs[:, indices].T @ encoded.qvecs[:, column]
        rows[q].append(Ranking(student.name if teacher is None else f"student {student.name}", indices.tolist(),
                               scores.tolist(), student_aps[q]))
    if teacher is not None:
        tq = describe_images(teacher.net, [queries[q] for q in kept], settings.image_size, settings.scales,
                             bbxs=[bbxs[q] for q in kept], config=settings.extraction().but(skip_bad=False))
        teacher_results, teacher_ranks = _search(encoded.vecs, tq, cfg, [cfg["gnd"][q] for q in kept],
                                                 settings.device, encoded.skipped_db)
        teacher_aps = _query_aps(teacher_results, kept, len(queries))
        for column, q in enumerate(kept):
            indices = teacher_ranks[:top, column]
            rows[q].append(Ranking(f"teacher {teacher.name}", indices.tolist(),
                                   (encoded.vecs[:, indices].T @ tq[:, column]).tolist(), teacher_aps[q]))
    how = (f"asymmetric: queries by {student.name}, database by {teacher.name}" if teacher is not None
           else f"symmetric: {student.name}")
    summary = "; ".join([how] + [line.split(": ", 1)[1] for line in format_results(dataset, results)])
    if not current_world().is_main:  # rank 0 writes it
        return Path(settings.report_dir) / dataset / "index.html"
    return write_report(Path(settings.report_dir) / dataset, dataset, cfg["gnd"], images, queries, bbxs, rows, summary)


def _encode(test: _TestSet, student: LoadedNetwork, database_encoder: LoadedNetwork, settings: TestSettings,
            cache_dir: Optional[Path]) -> _Encoded:
    dataset, images, queries, bbxs = test.name, test.images, test.queries, test.bbxs
    scales = list(settings.scales)
    skipped_db: List[int] = []
    skipped_queries: List[int] = []
    database = settings.extraction().but(desc=f"{dataset} database")
    if cache_dir is None:
        vecs = describe_images(database_encoder.net, images, settings.image_size, scales, config=database,
                               skipped=skipped_db)
    else:
        key = DescriptorKey.of(database_encoder.net, settings.image_size, scales, database,
                               database_encoder.fingerprint)
        vecs = cached_descriptors(database_encoder.net, images, key, cache_dir, dataset, skipped_db, config=database)
    qvecs = describe_images(student.net, queries, settings.image_size, scales, bbxs=bbxs, skipped=skipped_queries,
                            config=settings.extraction().but(desc=f"{dataset} queries"))
    return _Encoded(vecs, qvecs, skipped_db, skipped_queries)


def result_lines(dataset: str, entry: Dict[str, Any]) -> List[str]:
    """The original's printed lines of one data set's results (and whitened results), each
    ending with the count of skipped images when there were any, then where the skipped list
    and the ranking report went."""
    skipped = entry.get("skipped")
    count = len(skipped["database"]) + len(skipped["queries"]) if skipped else 0
    note = f" ({count} unreadable images skipped)" if count else ""
    lines = [line + note for line in format_results(dataset, entry["plain"])]
    if "whiten" in entry:
        lines += [line + note for line in format_results(dataset + " + whiten", entry["whiten"])]
    if "distractors" in entry:
        extra = entry["distractors"]
        unread = f", {extra['skipped']} unreadable ones skipped (list next to the shards)" if extra["skipped"] else ""
        lines.append(f">> {dataset}: {extra['count']} distractors added{unread}; descriptors in {extra['store']}")
    if skipped:
        lines.append(f">> {dataset}: {len(skipped['database'])} database images and {len(skipped['queries'])} "
                     f"queries could not be read and were skipped; list in {skipped['list']}")
    if "report" in entry:
        lines.append(f">> {dataset}: ranking report in {entry['report']}")
    return lines


def _evaluate_dataset(name: str, student: LoadedNetwork, database_encoder: LoadedNetwork,
                      teacher: Optional[LoadedNetwork], settings: TestSettings, lw,
                      cache_dir: Optional[Path]) -> Dict[str, Any]:
    dataset, suffix = split_test_name(name)
    dataset_dir = prepare_test_set(dataset, settings.data_root, progress=settings.progress)
    test = _TestSet.read(dataset, settings.data_root)
    cfg, images, queries = test.cfg, test.images, test.queries
    encoded = _encode(test, student, database_encoder, settings, cache_dir)
    kept = [q for q in range(len(queries)) if q not in set(encoded.skipped_queries)]
    qvecs, gnd = encoded.qvecs[:, kept], [cfg["gnd"][q] for q in kept]
    entry: Dict[str, Any] = {}
    if suffix is not None:
        store = distractor_store(suffix, database_encoder, settings)
        log.info(">> %s: Evaluating against %d + %d images...", name, len(images), store.count)
        entry["plain"] = _search_with_distractors(encoded.vecs, qvecs, cfg, gnd, settings.device, encoded.skipped_db,
                                                  store)
        if lw is not None:
            entry["whiten"] = _search_with_distractors(whitenapply(encoded.vecs, *lw), whitenapply(qvecs, *lw), cfg,
                                                       gnd, settings.device, encoded.skipped_db, store, lw)
        entry["distractors"] = {"count": store.count, "skipped": len(store.skipped()), "store": str(store.folder)}
    else:
        log.info(">> %s: Evaluating...", dataset)
        entry["plain"], ranks = _search(encoded.vecs, qvecs, cfg, gnd, settings.device, encoded.skipped_db)
        if lw is not None:
            entry["whiten"], _ = _search(whitenapply(encoded.vecs, *lw), whitenapply(qvecs, *lw), cfg, gnd,
                                         settings.device, encoded.skipped_db)
    if encoded.skipped_db or encoded.skipped_queries:
        listing = _write_skipped(test, encoded, settings, dataset_dir)
        entry["skipped"] = {"database": [images[i] for i in encoded.skipped_db],
                            "queries": [queries[i] for i in encoded.skipped_queries], "list": str(listing)}
    if settings.report_dir is not None:
        report_vecs = _Encoded(encoded.vecs, qvecs, encoded.skipped_db, encoded.skipped_queries)
        entry["report"] = str(_report(test, report_vecs, kept, ranks, entry["plain"], student, teacher, settings))
    return entry


def evaluate(student: LoadedNetwork, settings: TestSettings, teacher: Optional[LoadedNetwork] = None,
             on_result: Optional[Callable[[str, Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Test ``student`` (symmetric) or student vs ``teacher`` (asymmetric, when given) on
    every data set of ``settings``; return ``{dataset: {'plain': results, 'whiten':
    results}}`` (plus ``'skipped'`` when images were skipped, and ``'report'`` with
    ``settings.report_dir``). ``on_result(dataset, entry)`` is called as each data set is
    done (test.py prints `result_lines` there); progress is logged.

    Skipped database images are ranked last for every query; skipped queries are left out
    of the means."""
    database_encoder = teacher or student
    with_distractors = [name for name in settings.datasets if split_test_name(name)[1] is not None]
    if with_distractors and settings.report_dir is not None:
        raise ValueError(f"--report draws full rankings, which a distractor set makes too long ({with_distractors[0]}); "
                         "run --report without the '+' suffix")
    if teacher is not None and teacher.net.meta["outputdim"] != student.net.meta["outputdim"]:
        raise ValueError(f"asymmetric test needs equal dimensions: student {student.name} is "
                         f"{student.net.meta['outputdim']}-d, teacher {teacher.name} {teacher.net.meta['outputdim']}-d")
    for encoder in {id(e): e for e in (student, database_encoder)}.values():
        encoder.net.to(settings.device).eval()
    lw = get_whitening(database_encoder, settings.whitening, settings, published=teacher is None) if settings.whitening else None
    cache_dir = data_subdir(settings.data_root, "features") / "cache" if settings.cache else None
    results: Dict[str, Any] = {}
    for dataset in settings.datasets:
        start = time.time()
        log.info(">> %s: Extracting...", dataset)
        results[dataset] = _evaluate_dataset(dataset, student, database_encoder, teacher, settings, lw, cache_dir)
        if on_result is not None:
            on_result(dataset, results[dataset])
        log.info(">> %s: elapsed time: %s", dataset, htime(time.time() - start))
    return results
