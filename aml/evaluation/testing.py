"""The test pipeline behind test.py, as a library call: `evaluate` takes the networks and
`TestSettings` and returns typed results (`aml.evaluation.results.DatasetResult`), the peer of
`aml.training.run`.

Symmetric testing encodes everything with the tested network; asymmetric testing encodes the
database with the teacher and the (cropped) queries with the student; with whitening, the
teacher's whitening applies to both sides. Each network uses its own mean/std and its own
multi-scale power, and comes back as it went in (device, train/eval mode, memory format).

Every search goes through one `aml.evaluation.database.TestDatabase`: the test set's database
in memory, followed by a distractor set's descriptors read block by block for the +1M protocol
(``roxford5k+1m``). Re-ranking (``settings.reranking``) runs in this order on each of the plain
and whitened descriptors: DBA of the database, the first search, αQE of the queries with the
neighbours that search found (in asymmetric tests: the student's queries expanded with the
teacher's database descriptors), the search again, SuperGlobal's re-ranking of the first M
results of the last search; each search is a `SearchResult` of its own.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.data.distractors import DISTRACTOR_SETS, distractor_images, split_test_name
from aml.data.formats import TestConfig
from aml.data.paths import DataRoot, DataRootLike, data_subdir
from aml.data.testsets import configdataset, prepare_test_set, query_and_database_paths
from aml.descriptors import DescriptorKey, ExtractionConfig, cached_descriptors, describe_images
from aml.descriptors.store import DescriptorStore, StoreKey, encode_into_store
from aml.evaluation.database import Distractors, TestDatabase
from aml.evaluation.metrics import evaluate_ranks
from aml.evaluation.ranking import most_neighbours
from aml.evaluation.reranking import Reranking, search_with_expansion
from aml.evaluation.results import DatasetResult, DistractorsAdded, SearchResult, SkippedImages
from aml.evaluation.superglobal import Shortlist
from aml.evaluation.whitening import whitened
from aml.evaluation.whitening_store import Whitening, WhiteningRequest, get_whitening
from aml.networks.loading import LoadedNetwork
from aml.utils.atomic import atomic_write
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
        reranking: αQE, DBA and SuperGlobal (default: none).

    Examples:
        >>> from aml.descriptors import ExtractionConfig
        >>> from aml.evaluation import TestSettings
        >>> settings = TestSettings(datasets=("roxford5k",), extraction=ExtractionConfig(workers=0, device="cpu"))
        >>> settings.scales, type(settings.data_root).__name__
        ((1.0,), 'DataRoot')
    """

    __test__ = False  # not a pytest test class, despite its name
    datasets: Tuple[str, ...] = ("roxford5k", "rparis6k")
    image_size: int = 1024
    scales: Tuple[float, ...] = (1.0,)
    whitening: Optional[str] = None
    extraction: ExtractionConfig = TEST_EXTRACTION
    data_root: DataRootLike = None  # resolved once, into a DataRoot
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
    seconds = round(seconds)
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    parts, started = [], False
    for suffix, size in units:
        value, seconds = divmod(seconds, size)
        if value or started or suffix == "s":
            started = True
            parts.append(f"{value}{suffix}")
    return " ".join(parts)


def check_reranking(
    reranking: Reranking,
    datasets: Sequence[str],
    data_root: DataRootLike = None,
    sizes: bool = True,
    dim: Optional[int] = None,
) -> None:
    """Refuse a re-ranking that the test sets cannot take, before anything is encoded.

    DBA with a distractor set would need the neighbours of every distractor among all the
    others, so it is refused there; ``--dba`` must leave a neighbour out of the database
    (an image is not its own neighbour), and ``--qe`` and ``--superglobal`` must not exceed the
    database with its distractors, nor keep more neighbours' descriptors than memory is given
    for (`aml.evaluation.ranking.most_neighbours`: αQE with distractors, SuperGlobal always).
    The test sets are prepared (downloaded or generated) when missing.

    Args:
        reranking: the re-ranking asked for.
        datasets: the test set names, with their ``+`` distractor suffixes.
        data_root: the data root.
        sizes: also check the sizes (reading the test sets); False: only what needs no data.
        dim: the descriptors' dimension (the database encoder's), for the memory bound of
            ``--qe`` with distractors and of ``--superglobal``; None: not checked.

    Raises:
        ValueError: one line naming the flag, the test set and its size.
    """
    if not reranking.active:
        return
    for name in datasets:
        dataset, suffix = split_test_name(name)
        if reranking.dba and suffix is not None:
            raise ConfigError(
                f"--dba {reranking.dba} with {name}: database-side augmentation with distractors would "
                f"need the neighbours of every distractor among all the others; run --dba on {dataset} "
                f"(without '+{suffix}'); --qe works with distractors"
            )
    for name in datasets if sizes else ():
        dataset, suffix = split_test_name(name)
        prepare_test_set(dataset, data_root)
        test = _TestSet.read(dataset, data_root)
        size = len(test.images)
        if reranking.dba >= size:
            raise ConfigError(
                f"--dba {reranking.dba}: the database of {dataset} holds {size} images, so an image has "
                f"at most {size - 1} neighbours; give --dba {size - 1} or less"
            )
        distractors = len(distractor_images(suffix, data_root)) if suffix is not None else 0
        queries = len(test.queries)
        superglobal = reranking.superglobal.m if reranking.superglobal is not None else 0
        # αQE keeps its neighbours' descriptors while distractors are searched, SuperGlobal its first M always
        for flag, k, bounded in (("--qe", reranking.qe, suffix is not None), ("--superglobal", superglobal, True)):
            if k > size + distractors:
                held = f"{size} images" + (f" and {distractors} distractors" if suffix is not None else "")
                raise ConfigError(
                    f"{flag} {k}: the database of {name} holds {held}; give {flag} {size + distractors} or less"
                )
            most = most_neighbours(queries, dim) if dim is not None and bounded else None
            if most is not None and k > most:
                gib = queries * k * (dim or 0) * 4 / 2**30
                searched = "distractors are" if suffix is not None else "database is"
                raise ConfigError(
                    f"{flag} {k} with {name}: its {queries} queries would keep their {k} nearest {dim}-d "
                    f"descriptors ({gib:.3g} GiB) while the {searched} searched, more than a re-ranking is "
                    f"given; give {flag} {most} or less"
                )


def distractor_store(suffix: str, encoder: LoadedNetwork, settings: TestSettings) -> DescriptorStore:
    """The distractor set ``suffix`` encoded by ``encoder`` (once per network and settings:
    shared by every test set and by every student tested against this teacher)."""
    descriptors = DescriptorKey.of(
        encoder.net, settings.image_size, settings.scales, settings.extraction, encoder.fingerprint
    )
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
    cfg: TestConfig
    images: List[str]
    queries: List[str]
    bbxs: List[Any]

    @classmethod
    def read(cls, dataset: str, data_root: DataRootLike) -> "_TestSet":
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
    lines = [f"database\t{test.images[i]}" for i in sorted(encoded.skipped_db)]
    lines += [f"query\t{test.queries[i]}" for i in sorted(encoded.skipped_queries)]
    text = "".join(line + "\n" for line in lines)
    return atomic_write(path, lambda out: out.write(text.encode("utf-8", "surrogateescape")))  # names as on disk


def _query_aps(results: Dict[str, Any], kept: Sequence[int], nq: int) -> List[Optional[float]]:
    """Per-query AP (Medium for the revisited protocol) indexed by the original query number."""
    aps = results["medium"]["aps"] if "medium" in results else results["aps"]
    out: List[Optional[float]] = [None] * nq
    for q, ap in zip(kept, aps):
        out[q] = None if ap is None or np.isnan(ap) else float(ap)
    return out


def _report(
    test: _TestSet,
    encoded: _Encoded,
    kept: List[int],
    database: TestDatabase,
    plain: SearchResult,
    student: LoadedNetwork,
    teacher: Optional[LoadedNetwork],
    settings: TestSettings,
) -> Path:
    """The visual ranking report of one data set (with the teacher's own ranking when asymmetric)."""
    from aml.reports.ranking import Ranking, write_report

    dataset, cfg, images, queries, bbxs = test.name, test.cfg, test.images, test.queries, test.bbxs
    top = min(settings.report_top, encoded.vecs.shape[1])
    student_aps = _query_aps(plain.metrics, kept, len(queries))
    rows: List[List[Ranking]] = [[] for _ in queries]
    ranks, _ = database.nearest(encoded.qvecs, top)
    for column, q in enumerate(kept):
        indices = ranks[:, column]
        scores = encoded.vecs[:, indices].T @ encoded.qvecs[:, column]
        rows[q].append(
            Ranking(
                student.name if teacher is None else f"student {student.name}",
                indices.tolist(),
                scores.tolist(),
                student_aps[q],
            )
        )
    if teacher is not None:
        tq = describe_images(
            teacher.net,
            [queries[q] for q in kept],
            settings.image_size,
            settings.scales,
            bbxs=[bbxs[q] for q in kept],
            config=settings.extraction.but(skip_bad=False),
        )
        gnd = [cfg["gnd"][q] for q in kept]
        teacher_aps = _query_aps(
            evaluate_ranks(database.positions(tq), gnd, cfg["protocol"], positions=True), kept, len(queries)
        )
        teacher_ranks, _ = database.nearest(tq, top)
        for column, q in enumerate(kept):
            indices = teacher_ranks[:, column]
            rows[q].append(
                Ranking(
                    f"teacher {teacher.name}",
                    indices.tolist(),
                    (encoded.vecs[:, indices].T @ tq[:, column]).tolist(),
                    teacher_aps[q],
                )
            )
    how = (
        f"asymmetric: queries by {student.name}, database by {teacher.name}"
        if teacher is not None
        else f"symmetric: {student.name}"
    )
    lines = DatasetResult(dataset, (plain,)).lines()
    summary = "; ".join([how] + [line.split(": ", 1)[1] for line in lines])
    folder = Path(settings.report_dir or ".") / dataset
    if not current_world().is_main:  # rank 0 writes it
        return folder / "index.html"
    return write_report(folder, dataset, cfg["gnd"], images, queries, bbxs, rows, summary)


def _encode(
    test: _TestSet,
    student: LoadedNetwork,
    database_encoder: LoadedNetwork,
    settings: TestSettings,
    cache_dir: Optional[Path],
) -> _Encoded:
    dataset, images, queries, bbxs = test.name, test.images, test.queries, test.bbxs
    scales = list(settings.scales)
    skipped_db: List[int] = []
    skipped_queries: List[int] = []
    database = settings.extraction.but(desc=f"{dataset} database")
    if cache_dir is None:
        vecs = describe_images(
            database_encoder.net, images, settings.image_size, scales, config=database, skipped=skipped_db
        )
    else:
        key = DescriptorKey.of(
            database_encoder.net, settings.image_size, scales, database, database_encoder.fingerprint
        )
        vecs = cached_descriptors(database_encoder.net, images, key, cache_dir, dataset, skipped_db, config=database)
    qvecs = describe_images(
        student.net,
        queries,
        settings.image_size,
        scales,
        bbxs=bbxs,
        skipped=skipped_queries,
        config=settings.extraction.but(desc=f"{dataset} queries"),
    )
    return _Encoded(vecs, qvecs, skipped_db, skipped_queries)


def _searches(
    database: TestDatabase, queries: np.ndarray, test: _TestSet, kept: List[int], whitened: bool, reranking: Reranking
) -> List[SearchResult]:
    """The first search of ``database`` and, with ``reranking``, DBA and the searches after it."""
    gnd, protocol = [test.cfg["gnd"][q] for q in kept], test.cfg["protocol"]

    def metrics(searched: TestDatabase) -> Callable[[np.ndarray, Optional[Shortlist]], Dict[str, Any]]:
        def search(q: np.ndarray, shortlist: Optional[Shortlist]) -> Dict[str, Any]:
            places = searched.positions(q)
            places = places if shortlist is None else shortlist.places(places)
            return evaluate_ranks(places, gnd, protocol, positions=True)

        return search

    found = [SearchResult(whitened, Reranking(), metrics(database)(queries, None))]
    if not reranking.active:
        return found
    if reranking.dba:
        database = database.augmented(reranking.dba, reranking.dba_alpha)
    numbers = search_with_expansion(database, queries, reranking, metrics(database), first=bool(reranking.dba))
    return found + [SearchResult(whitened, steps, values) for steps, values in zip(reranking.stages(), numbers)]


def _evaluate_dataset(
    name: str,
    student: LoadedNetwork,
    database_encoder: LoadedNetwork,
    teacher: Optional[LoadedNetwork],
    settings: TestSettings,
    lw: Optional[Whitening],
    cache_dir: Optional[Path],
) -> DatasetResult:
    dataset, suffix = split_test_name(name)
    dataset_dir = prepare_test_set(dataset, settings.data_root, progress=settings.extraction.progress)
    test = _TestSet.read(dataset, settings.data_root)
    encoded = _encode(test, student, database_encoder, settings, cache_dir)
    kept = [q for q in range(len(test.queries)) if q not in set(encoded.skipped_queries)]
    qvecs = encoded.qvecs[:, kept]
    database = TestDatabase(encoded.vecs, encoded.skipped_db, device=settings.device)
    added = None
    if suffix is not None:
        store = distractor_store(suffix, database_encoder, settings)
        database = dataclasses.replace(database, distractors=Distractors(store.blocks, store.count, store.skipped()))
        added = DistractorsAdded(store.count, len(store.skipped()), str(store.folder))
        log.info(">> %s: Evaluating against %d + %d images...", name, len(test.images), store.count)
    else:
        log.info(">> %s: Evaluating...", dataset)
    searches = _searches(database, qvecs, test, kept, False, settings.reranking)
    if lw is not None:
        searches += _searches(
            database.whitened(lw, name), whitened(qvecs, lw, f"{name} query"), test, kept, True, settings.reranking
        )
    skipped = None
    if encoded.skipped_db or encoded.skipped_queries:
        listing = _write_skipped(test, encoded, settings, dataset_dir)
        skipped = SkippedImages(
            tuple(test.images[i] for i in encoded.skipped_db),
            tuple(test.queries[i] for i in encoded.skipped_queries),
            listing,
        )
    report = None
    if settings.report_dir is not None:
        kept_vecs = _Encoded(encoded.vecs, qvecs, encoded.skipped_db, encoded.skipped_queries)
        report = _report(test, kept_vecs, kept, database, searches[0], student, teacher, settings)
    return DatasetResult(name, tuple(searches), skipped, added, report)


def evaluate(
    student: LoadedNetwork,
    settings: TestSettings,
    teacher: Optional[LoadedNetwork] = None,
    on_result: Optional[Callable[[DatasetResult], None]] = None,
) -> Dict[str, DatasetResult]:
    """Test a network on every test set of ``settings``: symmetric, or asymmetric against a teacher.

    The networks come back as they went in: on their device, in their train/eval mode and
    memory format (the extraction works on them as it needs and restores them). Skipped
    database images (``settings.extraction.skip_bad``) are ranked last for every query;
    skipped queries are left out of the means. Progress is logged.

    Args:
        student: the tested network (it encodes the queries, and the database without a teacher).
        settings: the test sets and how to test (`TestSettings`).
        teacher: the teacher, which encodes the database (asymmetric testing); None: symmetric.
        on_result: called with each test set's result as it is done (test.py prints its
            `DatasetResult.lines` there).

    Returns:
        Per test set, in order, its `aml.evaluation.results.DatasetResult`: each search's
        numbers (plain, whitened, re-ranked), the skipped images, the distractors, the report.

    Raises:
        ConfigError: for a ranking report with distractors, networks of other dimensions, or a
            re-ranking the test sets cannot take (`check_reranking`).

    Examples:
        >>> from aml.descriptors import ExtractionConfig
        >>> from aml.evaluation import TestSettings, evaluate
        >>> from aml.networks import load_named_or_file
        >>> student = load_named_or_file("runs/.../model_best.pth.tar")  # doctest: +SKIP
        >>> teacher = load_named_or_file("vgg16")  # doctest: +SKIP
        >>> settings = TestSettings(datasets=("roxford5k", "rparis6k"), extraction=ExtractionConfig(workers=4))
        >>> results = evaluate(student, settings, teacher)  # doctest: +SKIP
        >>> results["roxford5k"].plain.map("medium")  # doctest: +SKIP
        0.512
    """
    database_encoder = teacher or student
    with_distractors = [name for name in settings.datasets if split_test_name(name)[1] is not None]
    if with_distractors and settings.report_dir is not None:
        raise ConfigError(
            f"--report draws full rankings, which a distractor set makes too long "
            f"({with_distractors[0]}); run --report without the '+' suffix"
        )
    if teacher is not None and teacher.net.meta["outputdim"] != student.net.meta["outputdim"]:
        raise ConfigError(
            f"asymmetric test needs equal dimensions: student {student.name} is "
            f"{student.net.meta['outputdim']}-d, teacher {teacher.name} "
            f"{teacher.net.meta['outputdim']}-d"
        )
    check_reranking(
        settings.reranking, settings.datasets, settings.data_root, dim=database_encoder.net.meta["outputdim"]
    )
    if settings.extraction.device is None:  # the student's device, for every extraction and search
        settings = settings.but(extraction=settings.extraction.but(device=settings.extraction.device_for(student.net)))
    lw = (
        get_whitening(database_encoder, settings.whitening_request(), published=teacher is None)
        if settings.whitening
        else None
    )
    cache_dir = data_subdir(settings.data_root, "features") / "cache" if settings.cache else None
    results: Dict[str, DatasetResult] = {}
    for dataset in settings.datasets:
        start = time.time()
        log.info(">> %s: Extracting...", dataset)
        results[dataset] = _evaluate_dataset(dataset, student, database_encoder, teacher, settings, lw, cache_dir)
        if on_result is not None:
            on_result(results[dataset])
        log.info(">> %s: elapsed time: %s", dataset, htime(time.time() - start))
    return results
