"""The test pipeline behind test.py: symmetric and asymmetric retrieval on test sets,
with optional learned whitening, returning every number as a dict.

Asymmetric testing: the database is encoded by the teacher, the (cropped) queries by the
student; with whitening, the teacher's whitening applies to both sides. Each network
uses its own mean/std and its own multi-scale power.

Re-ranking (``settings.reranking``) runs in this order on each of the plain and whitened
descriptors: DBA of the database, the first search, αQE of the queries with the neighbours
that search found (in asymmetric tests: the student's queries expanded with the teacher's
database descriptors), the final search. Each step adds its own results entry.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.data.paths import DataRoot, data_subdir
from aml.data.distractors import DISTRACTOR_SETS, distractor_images, split_test_name
from aml.data.testsets import configdataset, prepare_test_set, query_and_database_paths
from aml.descriptors import DescriptorKey, ExtractionConfig, cached_descriptors, describe_images
from aml.descriptors.store import DescriptorStore, StoreKey, encode_into_store
from aml.evaluation.metrics import evaluate_ranks, format_results
from aml.evaluation.reranking import Reranking, alpha_query_expansion, database_augmentation, weighted_expansion
from aml.evaluation.search import nearest_with_distractors, positions_with_distractors, rank_database
from aml.evaluation.whitening import whitenapply
from aml.evaluation.whitening_store import WhiteningRequest, get_whitening
from aml.networks.loading import LoadedNetwork
from aml.utils.distributed import current_world
from aml.utils.errors import ConfigError, lookup

log = logging.getLogger(__name__)


#: how test.py extracts unless told otherwise: its defaults (-j 8; the device is the network's)
TEST_EXTRACTION = ExtractionConfig(workers=8)


@dataclass(frozen=True)
class TestSettings:
    """Everything test.py's flags decide besides the networks.

    Attributes:
        datasets: the test sets, with their ``+`` distractor suffixes.
        image_size: the longer side images are shrunk to.
        scales: the multi-scale factors.
        whitening: the whitening set (None: no whitening).
        extraction: how the images are encoded (its device, default the network's, is where
            the searches run too; ``skip_bad`` skips unreadable images, listed in
            ``skipped_dir``).
        data_root: the data root, resolved once (`aml.data.paths.DataRoot`).
        cache: keep the database descriptors in ``<data_root>/features/cache``.
        skipped_dir: where ``skipped_<dataset>.txt`` goes (None: the data set's folder).
        report_dir: write the visual ranking report there (None: none).
        report_top: the database images the report shows per query.
        distractor_dtype: the dtype of the distractor store (float16 halves its disk and reads).
        shard_size: images per distractor shard.
        reranking: αQE and DBA (default: none).

    Examples:
        >>> from aml.descriptors import ExtractionConfig
        >>> from aml.evaluation import TestSettings
        >>> settings = TestSettings(datasets=("roxford5k",), extraction=ExtractionConfig(workers=0, device="cpu"))
        >>> settings.scales, settings.data_root.path.is_absolute()
        ((1.0,), True)
    """

    __test__ = False  # not a pytest test class, despite its name
    datasets: Tuple[str, ...] = ("roxford5k", "rparis6k")
    image_size: int = 1024
    scales: Tuple[float, ...] = (1.0,)
    whitening: Optional[str] = None
    extraction: ExtractionConfig = TEST_EXTRACTION
    data_root: DataRoot = None  # type: ignore[assignment]  # resolved from None, a path or a DataRoot
    cache: bool = True
    skipped_dir: Optional[Path] = None
    report_dir: Optional[Path] = None
    report_top: int = 10
    distractor_dtype: str = "float32"
    shard_size: int = 16384
    reranking: Reranking = Reranking()

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "data_root", DataRoot.resolve(self.data_root))

    @property
    def device(self) -> str:
        """Where the images are encoded and the searches run (the CPU when not set)."""
        return str(self.extraction.device_for())

    def but(self, **changes: Any) -> "TestSettings":
        """A copy with some fields changed.

        Args:
            **changes: the new values, by field name.

        Returns:
            The changed copy (these settings stay as they are).

        Raises:
            TypeError: for a name that is not a field.
        """
        return dataclasses.replace(self, **changes)

    def whitening_request(self) -> WhiteningRequest:
        """What the whitening of these settings is learned (or found) with.

        Returns:
            The request: the whitening set, encoded like the test images.
        """
        assert self.whitening is not None
        return WhiteningRequest(self.whitening, self.image_size, self.scales, self.extraction, self.data_root)


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
    places = positions_with_distractors(database, queries, store.blocks(), device, excluded, store.skipped(),
                                        _whitening_transform(lw))
    return evaluate_ranks(places, gnd, cfg["protocol"], positions=True)


def _whitening_transform(lw):
    return (lambda x: whitenapply(x, *lw)) if lw is not None else None


def _rerank(base: str, database: np.ndarray, queries: np.ndarray, ranks: np.ndarray, entry: Dict[str, Any],
            cfg: Dict[str, Any], gnd: List[Dict[str, Any]], settings: TestSettings, excluded: Sequence[int]) -> None:
    """Add the re-ranked entries of ``base`` (``ranks``: its search): DBA, the first search,
    αQE with that search's neighbours, the final search."""
    reranking, device = settings.reranking, settings.device
    keys = reranking.result_keys(base)
    if reranking.dba:
        database = database_augmentation(database, reranking.dba, reranking.dba_alpha, device, excluded)
        entry[keys[0]], ranks = _search(database, queries, cfg, gnd, device, excluded)
    if reranking.qe:
        expanded = alpha_query_expansion(queries, database, ranks, reranking.qe, reranking.qe_alpha)
        entry[keys[-1]], _ = _search(database, expanded, cfg, gnd, device, excluded)


def _rerank_with_distractors(base: str, database: np.ndarray, queries: np.ndarray, entry: Dict[str, Any],
                             cfg: Dict[str, Any], gnd: List[Dict[str, Any]], settings: TestSettings,
                             excluded: Sequence[int], store: DescriptorStore, lw=None) -> None:
    """αQE with the neighbours among the test database and the store's distractors (DBA is
    refused with distractors, `check_reranking`), then the final search over both."""
    reranking = settings.reranking
    if not reranking.qe:
        return
    _, neighbours = nearest_with_distractors(database, queries, reranking.qe, store.blocks(), settings.device,
                                             excluded, store.skipped(), _whitening_transform(lw))
    expanded = weighted_expansion(queries, neighbours, reranking.qe_alpha)
    entry[reranking.result_keys(base)[-1]] = _search_with_distractors(database, expanded, cfg, gnd, settings.device,
                                                                      excluded, store, lw)


def check_reranking(reranking: Reranking, datasets: Sequence[str], data_root: Optional[str] = None,
                    sizes: bool = True) -> None:
    """Refuse a re-ranking that the test sets cannot take, before anything is encoded.

    DBA with a distractor set would need the neighbours of every distractor among all the
    others, so it is refused there; ``--dba`` must leave a neighbour out of the database
    (an image is not its own neighbour) and ``--qe`` must not exceed the database with its
    distractors. The test sets are prepared (downloaded or generated) when missing.

    Args:
        reranking: the re-ranking asked for.
        datasets: the test set names, with their ``+`` distractor suffixes.
        data_root: the data root.
        sizes: also check the sizes (reading the test sets); False: only what needs no data.

    Raises:
        ValueError: one line naming the flag, the test set and its size.
    """
    if not reranking.active:
        return
    for name in datasets:
        dataset, suffix = split_test_name(name)
        if reranking.dba and suffix is not None:
            raise ConfigError(f"--dba {reranking.dba} with {name}: database-side augmentation with distractors would "
                              f"need the neighbours of every distractor among all the others; run --dba on {dataset} "
                              f"(without '+{suffix}'); --qe works with distractors")
    for name in datasets if sizes else ():
        dataset, suffix = split_test_name(name)
        prepare_test_set(dataset, data_root)
        size = len(_TestSet.read(dataset, data_root).images)
        if reranking.dba >= size:
            raise ConfigError(f"--dba {reranking.dba}: the database of {dataset} holds {size} images, so an image has "
                              f"at most {size - 1} neighbours; give --dba {size - 1} or less")
        distractors = len(distractor_images(suffix, data_root)) if suffix is not None else 0
        if reranking.qe > size + distractors:
            held = f"{size} images" + (f" and {distractors} distractors" if suffix is not None else "")
            raise ConfigError(f"--qe {reranking.qe}: the database of {name} holds {held}; give --qe "
                              f"{size + distractors} or less")


def distractor_store(suffix: str, encoder: LoadedNetwork, settings: TestSettings) -> DescriptorStore:
    """The distractor set ``suffix`` encoded by ``encoder`` (once per network and settings:
    shared by every test set and by every student tested against this teacher)."""
    descriptors = DescriptorKey.of(encoder.net, settings.image_size, settings.scales, settings.extraction,
                                   encoder.fingerprint)
    key = StoreKey(descriptors, encoder.name, settings.distractor_dtype, settings.shard_size)
    name = lookup(DISTRACTOR_SETS, suffix, "distractor set").folder
    tag = f"imsize{settings.image_size}_{settings.distractor_dtype}_{key.tag()}"
    folder = data_subdir(settings.data_root, "features") / "distractors" / f"{name}_{encoder.fingerprint}_{tag}"
    progress = settings.extraction.progress
    images = distractor_images(suffix, settings.data_root, progress)
    # each process encodes its own shards
    config = settings.extraction.but(progress=progress and current_world().is_main, desc=f"{name} shard")
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
                             bbxs=[bbxs[q] for q in kept], config=settings.extraction.but(skip_bad=False))
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
    database = settings.extraction.but(desc=f"{dataset} database")
    if cache_dir is None:
        vecs = describe_images(database_encoder.net, images, settings.image_size, scales, config=database,
                               skipped=skipped_db)
    else:
        key = DescriptorKey.of(database_encoder.net, settings.image_size, scales, database,
                               database_encoder.fingerprint)
        vecs = cached_descriptors(database_encoder.net, images, key, cache_dir, dataset, skipped_db, config=database)
    qvecs = describe_images(student.net, queries, settings.image_size, scales, bbxs=bbxs, skipped=skipped_queries,
                            config=settings.extraction.but(desc=f"{dataset} queries"))
    return _Encoded(vecs, qvecs, skipped_db, skipped_queries)


def result_keys(entry: Dict[str, Any]) -> List[str]:
    """The entries of one data set's results that hold numbers, in the order they were made:
    ``'plain'``, its re-ranked entries (``'plain + dba10'``, ``'plain + dba10 + αqe2'``), then
    ``'whiten'`` and its re-ranked entries."""
    return [key for key in entry if key in ("plain", "whiten") or key.startswith(("plain + ", "whiten + "))]


def result_lines(dataset: str, entry: Dict[str, Any]) -> List[str]:
    """The original's printed lines of one data set's results (and whitened results, and
    each re-ranked entry: ``>> roxford5k + whiten + dba10 + αqe2: ...``), each ending with the
    count of skipped images when there were any, then where the skipped list and the ranking
    report went."""
    skipped = entry.get("skipped")
    count = len(skipped["database"]) + len(skipped["queries"]) if skipped else 0
    note = f" ({count} unreadable images skipped)" if count else ""
    lines = []
    for key in result_keys(entry):
        name = dataset if key == "plain" else f"{dataset} + {key.removeprefix('plain + ')}"
        lines += [line + note for line in format_results(name, entry[key])]
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
    dataset_dir = prepare_test_set(dataset, settings.data_root, progress=settings.extraction.progress)
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
        _rerank_with_distractors("plain", encoded.vecs, qvecs, entry, cfg, gnd, settings, encoded.skipped_db, store)
        if lw is not None:
            vecs_lw, qvecs_lw = whitenapply(encoded.vecs, *lw), whitenapply(qvecs, *lw)
            entry["whiten"] = _search_with_distractors(vecs_lw, qvecs_lw, cfg, gnd, settings.device, encoded.skipped_db,
                                                       store, lw)
            _rerank_with_distractors("whiten", vecs_lw, qvecs_lw, entry, cfg, gnd, settings, encoded.skipped_db, store,
                                     lw)
        entry["distractors"] = {"count": store.count, "skipped": len(store.skipped()), "store": str(store.folder)}
    else:
        log.info(">> %s: Evaluating...", dataset)
        entry["plain"], ranks = _search(encoded.vecs, qvecs, cfg, gnd, settings.device, encoded.skipped_db)
        _rerank("plain", encoded.vecs, qvecs, ranks, entry, cfg, gnd, settings, encoded.skipped_db)
        if lw is not None:
            vecs_lw, qvecs_lw = whitenapply(encoded.vecs, *lw), whitenapply(qvecs, *lw)
            entry["whiten"], ranks_lw = _search(vecs_lw, qvecs_lw, cfg, gnd, settings.device, encoded.skipped_db)
            _rerank("whiten", vecs_lw, qvecs_lw, ranks_lw, entry, cfg, gnd, settings, encoded.skipped_db)
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
    results}}`` (plus the re-ranked entries of ``settings.reranking``, `result_keys`;
    ``'skipped'`` when images were skipped, and ``'report'`` with ``settings.report_dir``).
    ``on_result(dataset, entry)`` is called as each data set is done (test.py prints
    `result_lines` there); progress is logged.

    Skipped database images are ranked last for every query; skipped queries are left out
    of the means."""
    database_encoder = teacher or student
    with_distractors = [name for name in settings.datasets if split_test_name(name)[1] is not None]
    if with_distractors and settings.report_dir is not None:
        raise ConfigError(f"--report draws full rankings, which a distractor set makes too long ({with_distractors[0]}); "
                          "run --report without the '+' suffix")
    if teacher is not None and teacher.net.meta["outputdim"] != student.net.meta["outputdim"]:
        raise ConfigError(f"asymmetric test needs equal dimensions: student {student.name} is "
                          f"{student.net.meta['outputdim']}-d, teacher {teacher.name} {teacher.net.meta['outputdim']}-d")
    check_reranking(settings.reranking, settings.datasets, settings.data_root)
    for encoder in {id(e): e for e in (student, database_encoder)}.values():
        encoder.net.to(settings.device).eval()
    lw = (get_whitening(database_encoder, settings.whitening_request(), published=teacher is None)
          if settings.whitening else None)
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
