"""The test pipeline behind test.py, as a library call: `evaluate` takes the networks and
`TestSettings` and returns typed results (`aml.evaluation.results.DatasetResult`), the peer of
`aml.training.run`.

Symmetric testing encodes everything with the tested network; asymmetric testing encodes the
database with the teacher and the (cropped) queries with the student; with whitening, the
teacher's whitening applies to both sides. Each network uses its own mean/std and its own
multi-scale power, and comes back as it went in (device, train/eval mode, memory format).

A test runs in three steps: the settings are resolved into a `aml.evaluation.plan.TestPlan`
(checked, every file they name read, the descriptors' key built), then everything is encoded
(the whitening learned unless known or cached, each test set's database and queries, each
distractor set into its store), then each test set is searched and its result handed on.

Every search goes through one `aml.evaluation.database.TestDatabase`: the test set's database
in memory, followed by a distractor set's descriptors read block by block for the +1M protocol
(``roxford5k+1m``). Re-ranking (``settings.reranking``) runs in this order on each of the plain
and whitened descriptors: DBA of the database, the first search, αQE of the queries with the
neighbours that search found (in asymmetric tests: the student's queries expanded with the
teacher's database descriptors), the search again, SuperGlobal's re-ranking of the first M
results of the last search; each search is a `SearchResult` of its own.
"""

import copy
import dataclasses
import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union, cast

import numpy as np

from aml.data.testsets import LEVELS
from aml.descriptors import cached_descriptors, describe_images
from aml.descriptors.store import MANIFEST, DescriptorStore, encode_into_store, warn_of_skipped
from aml.evaluation.database import Distractors, TestDatabase
from aml.evaluation.metrics import Metrics, evaluate_positions
from aml.evaluation.plan import PlannedSet, TestPlan, TestSettings
from aml.evaluation.reranking import Reranking, search_with_expansion
from aml.evaluation.results import DatasetResult, DistractorsAdded, SearchResult, SkippedImages
from aml.evaluation.superglobal import Shortlist
from aml.evaluation.whitening import whitened
from aml.evaluation.whitening_store import Whitening, learned_whitening
from aml.networks.loading import LoadedNetwork, Source
from aml.utils.atomic import atomic_write, optional_write
from aml.utils.distributed import World, barrier, current_world, from_main, warn_once
from aml.utils.errors import AmlError, DataError

__all__ = ["evaluate", "htime"]

log = logging.getLogger(__name__)


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


@dataclass
class _Encoded:
    """One test set's descriptors: the database by the database encoder, the queries by the
    tested one (those that could be read), the images skipped (unreadable, with ``skip_bad``),
    and the teacher's queries when the ranking report shows its ranking too."""

    vecs: np.ndarray
    qvecs: np.ndarray
    kept: List[int]
    skipped_db: List[int]
    skipped_queries: List[int]
    teacher_qvecs: Optional[np.ndarray] = None


def _test_whitening(plan: TestPlan) -> Optional[Whitening]:
    """The whitening of the test: known, else from its cache or learned (None: no whitening)."""
    planned = plan.whitening
    if planned is None:
        return None
    if planned.known is not None:
        return planned.known
    assert planned.db is not None  # read by the plan when the whitening is not known
    return learned_whitening(plan.database_encoder, planned.request, planned.db, plan.key)


def _encode(plan: TestPlan, test: PlannedSet) -> _Encoded:
    """A test set's database (cached when the plan says so) and queries."""
    encoder, dataset, s = plan.database_encoder, test.dataset, plan.settings
    skipped_db: List[int] = []
    skipped_queries: List[int] = []
    database = s.extraction.but(desc=f"{dataset} database")
    log.info(">> %s: database images...", test.name)
    if plan.cache_dir is None:
        vecs = describe_images(encoder.net, test.images, s.image_size, s.scales, config=database, skipped=skipped_db)
    else:
        vecs = cached_descriptors(
            encoder.net, test.images, plan.key, plan.cache_dir, dataset, skipped_db, config=database
        )
    log.info(">> %s: query images...", test.name)
    qvecs = describe_images(
        plan.student.net,
        test.queries,
        s.image_size,
        s.scales,
        bbxs=test.bbxs,
        skipped=skipped_queries,
        config=s.extraction.but(desc=f"{dataset} queries"),
    )
    kept = [q for q in range(len(test.queries)) if q not in set(skipped_queries)]
    for what, images, skipped in (
        ("database image", test.images, skipped_db),
        ("query", test.queries, skipped_queries),
    ):
        if images and len(skipped) == len(images):  # no mAP to give: not a result of nan
            raise DataError(
                f"{test.name}: every {what} was skipped as unreadable (first: {images[0]}): the set's images are "
                "missing or damaged; prepare it again (and see the first error without --skip-bad-images)"
            )
    teacher_qvecs = None
    if s.report_dir is not None and plan.teacher is not None:  # the report shows the teacher's ranking too
        teacher_qvecs = describe_images(
            plan.teacher.net,
            [test.queries[q] for q in kept],
            s.image_size,
            s.scales,
            bbxs=[test.bbxs[q] for q in kept],
            config=s.extraction.but(skip_bad=False),
        )
    return _Encoded(vecs, qvecs[:, kept], kept, skipped_db, skipped_queries, teacher_qvecs)


@dataclass(frozen=True)
class _DistractorStore:
    """A distractor set's store, and whether this test made it for itself alone (``temporary``:
    of a network in memory, a student between two epochs of ``main.py --test-freq``, which no
    later test finds again: deleted once searched, as it holds gigabytes for +1M)."""

    store: DescriptorStore
    temporary: bool


def _drop_temporary(temporary: List[Path], together: bool = True) -> None:
    """Delete the temporary stores' folders, by rank 0 once every rank has searched (each
    wrote its own shards); ``together`` False (a test that failed, its stores encoded or not):
    at once, without waiting for the other ranks, which may never come."""
    if not temporary:
        return
    world = current_world()
    if together:
        barrier(world)
    if world.is_main:
        for folder in temporary:
            shutil.rmtree(folder, ignore_errors=True)
            log.info(">> %s: deleted (the distractors of a network in memory, found by no later test)", folder)


def _drop_cut_short(folder: Path) -> None:
    """Delete a temporary store whose deletion a failed test cut short (shards, no manifest:
    a network in memory's, which no later test finds; creating it again refused it)."""
    world = current_world()
    if not from_main(not (folder / MANIFEST).is_file() and any(folder.glob("shard_*.npy")), world):
        return
    if world.is_main:
        shutil.rmtree(folder, ignore_errors=True)
        log.info(">> %s: deleted (the shards of an earlier test of a network in memory, cut short)", folder)
    barrier(world)


def _store(plan: TestPlan, suffix: str, temporary: List[Path]) -> _DistractorStore:
    """The distractor set ``suffix`` encoded into its store (only the shards still missing);
    temporary where the network is in memory alone and the store was not there before: its
    folder is added to ``temporary`` before it is encoded (a failure midway leaves it there)."""
    encoder, planned = plan.database_encoder, plan.distractors[suffix]
    log.info(
        ">> %s: %d distractors, descriptors by %s in %s",
        planned.name,
        len(planned.images),
        encoder.name,
        planned.folder,
    )
    in_memory = encoder.spec.source is Source.MEMORY
    if in_memory:
        _drop_cut_short(planned.folder)
    made_here = in_memory and not from_main(planned.folder.exists(), current_world())  # one decision for all ranks
    if made_here:
        temporary.append(planned.folder)
    store = encode_into_store(encoder.net, planned.images, planned.folder, planned.key, planned.extraction)
    if made_here:  # its list goes with the store once searched: the images are named here
        skipped = [store.images[i] for i in store.skipped()]
        if skipped:
            warn_once(log, ">> %d unreadable distractors skipped (the first: %s)", len(skipped), skipped[0])
    else:
        warn_of_skipped(store)
    return _DistractorStore(store, made_here)


def _write_skipped(test: PlannedSet, encoded: _Encoded) -> Optional[Path]:
    """The list of the skipped images, in ``test.listing``; None where that folder cannot be
    written (a read-only data set folder, a full disk: a warning says so)."""
    lines = [f"database\t{test.images[i]}" for i in sorted(encoded.skipped_db)]
    lines += [f"query\t{test.queries[i]}" for i in sorted(encoded.skipped_queries)]
    text = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")  # names as on disk
    with optional_write(f"the list of skipped images {test.listing}"):
        return atomic_write(test.listing, lambda out: out.write(text))
    _remove_stale_listing(test)
    return None


def _remove_stale_listing(test: PlannedSet) -> None:
    """Delete an earlier test's list of skipped images where this test wrote none (it read
    every image, or could not write its list): left beside new results, it would name images
    that this test did not skip."""
    if not test.listing.is_file():
        return
    try:
        test.listing.unlink()
    except OSError as err:
        log.warning(
            ">> %s is an earlier test's list of skipped images, not this one's: it could not be removed (%s)",
            test.listing,
            err,
        )


def _every_query(results: Metrics, kept: Sequence[int], nq: int) -> Metrics:
    """``results`` of the ``kept`` queries with each level's per-query APs placed at their
    query's number, NaN for a query that was skipped (unreadable): a results file's ``aps[q]``
    is query q's, whichever queries were skipped."""
    if len(kept) == nq:
        return results
    placed = cast(Dict[str, Any], copy.deepcopy(results))
    levels = [placed[level] for level in LEVELS if level in placed]
    for entry in levels + ([placed] if "aps" in placed else []):
        entry["aps"] = _placed(entry["aps"], kept, nq)
    return cast(Metrics, placed)


def _placed(aps: Sequence[float], kept: Sequence[int], nq: int) -> List[float]:
    out = [float("nan")] * nq
    for q, ap in zip(kept, aps, strict=True):
        out[q] = ap
    return out


def _query_aps(results: Metrics) -> List[Optional[float]]:
    """Per-query AP (Medium for the revisited protocol) by query number (None: skipped, or no positive)."""
    aps = results["medium"]["aps"] if "medium" in results else results["aps"]
    return [None if ap is None or np.isnan(ap) else float(ap) for ap in aps]


@dataclass(frozen=True)
class _Shown:
    """The search a ranking report shows: the whitened one when the test whitens, else the
    plain one (before any re-ranking), with the descriptors it ranked."""

    database: TestDatabase
    queries: np.ndarray
    teacher_queries: Optional[np.ndarray]
    result: SearchResult


def _report(
    plan: TestPlan, test: PlannedSet, encoded: _Encoded, shown: _Shown, skipped: Optional[SkippedImages]
) -> Path:
    """The visual ranking report of one data set (with the teacher's own ranking when
    asymmetric), its summary saying which images were skipped as unreadable."""
    from aml.reports.ranking import Ranking, write_report

    student, teacher, kept = plan.student, plan.teacher, encoded.kept
    dataset, cfg, images, queries, bbxs = test.dataset, test.cfg, test.images, test.queries, test.bbxs
    database = shown.database
    top = min(plan.settings.report_top, database.searchable)  # the images skipped unreadable are never found
    student_aps = _query_aps(shown.result.metrics)
    rows: List[List[Ranking]] = [[] for _ in queries]
    ranks, _ = database.nearest(shown.queries, top)
    for column, q in enumerate(kept):
        indices = ranks[:, column]
        scores = database.vecs[:, indices].T @ shown.queries[:, column]
        rows[q].append(
            Ranking(
                student.name if teacher is None else f"student {student.name}",
                indices.tolist(),
                scores.tolist(),
                student_aps[q],
            )
        )
    tq = shown.teacher_queries
    if teacher is not None and tq is not None:
        teacher_aps = _query_aps(_test_metrics(database.positions(tq), test, kept))
        teacher_ranks, _ = database.nearest(tq, top)
        for column, q in enumerate(kept):
            indices = teacher_ranks[:, column]
            rows[q].append(
                Ranking(
                    f"teacher {teacher.name}",
                    indices.tolist(),
                    (database.vecs[:, indices].T @ tq[:, column]).tolist(),
                    teacher_aps[q],
                )
            )
    how = (
        f"asymmetric: queries by {student.name}, database by {teacher.name}"
        if teacher is not None
        else f"symmetric: {student.name}"
    )
    lines = DatasetResult(dataset, (shown.result,), skipped).lines()  # ">> roxford5k + whiten: mAP ...", as test.py
    level = ["each query's AP below is its Medium AP"] if cfg["protocol"] == "revisited" else []
    summary = "; ".join([how] + [line.removeprefix(">> ") for line in lines] + level)
    folder = Path(plan.settings.report_dir or ".") / dataset
    return write_report(folder, dataset, cfg["gnd"], images, queries, bbxs, rows, summary)


def _test_metrics(places: np.ndarray, test: PlannedSet, kept: List[int]) -> Metrics:
    """The metrics of the ``kept`` queries' database ``places`` (`TestDatabase.positions`),
    with every query of the test set in its per-query lists (`_every_query`)."""
    gnd = [test.cfg["gnd"][q] for q in kept]
    return _every_query(evaluate_positions(places, gnd, test.cfg["protocol"]), kept, len(test.queries))


def _searches(
    database: TestDatabase, queries: np.ndarray, test: PlannedSet, kept: List[int], whitened: bool, reranking: Reranking
) -> List[SearchResult]:
    """The first search of ``database`` and, with ``reranking``, DBA and the searches after it."""

    def metrics(searched: TestDatabase) -> Callable[[np.ndarray, Optional[Shortlist]], Metrics]:
        def search(q: np.ndarray, shortlist: Optional[Shortlist]) -> Metrics:
            places = searched.positions(q)
            return _test_metrics(places if shortlist is None else shortlist.places(places), test, kept)

        return search

    found = [SearchResult(whitened, Reranking(), metrics(database)(queries, None))]
    if not reranking.active:
        return found
    if reranking.dba:
        database = database.augmented(reranking.dba, reranking.dba_alpha)
    numbers = search_with_expansion(database, queries, reranking, metrics(database), first=bool(reranking.dba))
    return found + [
        SearchResult(whitened, steps, values) for steps, values in zip(reranking.stages(), numbers, strict=True)
    ]


def _search(
    plan: TestPlan, test: PlannedSet, encoded: _Encoded, lw: Optional[Whitening], found: Optional[_DistractorStore]
) -> DatasetResult:
    """Every search of one test set (plain, whitened, re-ranked), its skipped images, distractors,
    report (rank 0 alone, which writes the files)."""
    name, kept = test.name, encoded.kept
    database = TestDatabase(encoded.vecs, encoded.skipped_db, device=plan.device)
    added = None
    if found is not None:
        store = found.store
        database = dataclasses.replace(database, distractors=Distractors(store.blocks, store.count, store.skipped()))
        added = DistractorsAdded(store.count, len(store.skipped()), str(store.folder), kept=not found.temporary)
        log.info(">> %s: Evaluating against %d + %d images...", name, len(test.images), store.count)
    else:
        log.info(">> %s: Evaluating...", test.dataset)
    reranking = plan.settings.reranking
    searches = _searches(database, encoded.qvecs, test, kept, False, reranking)
    # what a ranking report shows: the whitened search when the test whitens, else the plain one
    shown = _Shown(database, encoded.qvecs, encoded.teacher_qvecs, searches[0])
    if lw is not None:
        white_database, white_queries = database.whitened(lw, name), whitened(encoded.qvecs, lw, f"{name} query")
        white = _searches(white_database, white_queries, test, kept, True, reranking)
        tq = encoded.teacher_qvecs  # encoded for a report alone
        white_tq = None if tq is None else whitened(tq, lw, f"{name} teacher query")
        shown = _Shown(white_database, white_queries, white_tq, white[0])
        searches += white
    skipped = None
    if encoded.skipped_db or encoded.skipped_queries:
        skipped = SkippedImages(
            tuple(test.images[i] for i in encoded.skipped_db),
            tuple(test.queries[i] for i in encoded.skipped_queries),
            _write_skipped(test, encoded),
        )
    else:
        _remove_stale_listing(test)
    report = None
    if plan.settings.report_dir is not None:  # refused with distractors: the test set's own database
        report = _report(plan, test, encoded, shown, skipped)
    return DatasetResult(name, tuple(searches), skipped, added, report)


def _searched_by_main(world: World, search: Callable[[], DatasetResult]) -> DatasetResult:
    """``search()`` on rank 0 alone (each rank holds every descriptor; rank 0 writes the files),
    its result, or its error about the data, handed to every rank, which all end alike."""
    outcome: Union[DatasetResult, AmlError, None] = None
    if world.is_main:
        try:
            outcome = search()
        except AmlError as err:  # a damaged store, a whitening of NaN: the others would wait for rank 0
            outcome = err
    outcome = from_main(outcome, world)
    if isinstance(outcome, AmlError):
        raise outcome
    return outcome


def evaluate(
    student: LoadedNetwork,
    settings: TestSettings,
    teacher: Optional[LoadedNetwork] = None,
    on_result: Optional[Callable[[DatasetResult], None]] = None,
) -> Dict[str, DatasetResult]:
    """Test a network on every test set of ``settings``: symmetric, or asymmetric against a teacher.

    The settings are checked and every file they name is read first (`TestPlan.of`), then the
    images are encoded, then each test set is searched. The networks come back as they went
    in: on their device, in their train/eval mode and memory format (the extraction works on
    them as it needs and restores them). Skipped database images
    (``settings.extraction.skip_bad``) are ranked last for every query; skipped queries are
    left out of the means. Progress is logged.

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
    plan = TestPlan.of(student, settings, teacher)
    lw = _test_whitening(plan)
    temporary: List[Path] = []
    try:
        results = _encode_and_search(plan, lw, temporary, on_result)
    except BaseException:
        _drop_temporary(temporary, together=False)
        raise
    _drop_temporary(temporary)
    return results


def _encode_and_search(
    plan: TestPlan,
    lw: Optional[Whitening],
    temporary: List[Path],
    on_result: Optional[Callable[[DatasetResult], None]],
) -> Dict[str, DatasetResult]:
    """Encode every test set (and its distractors, the folders of temporary stores added to
    ``temporary``), then search each in turn."""
    stores: Dict[str, _DistractorStore] = {}
    encoded: Dict[str, _Encoded] = {}
    seconds: Dict[str, float] = {}
    for test in plan.sets:
        start = time.time()
        log.info(">> %s: Extracting...", test.name)
        encoded[test.name] = _encode(plan, test)
        if test.distractors is not None and test.distractors not in stores:
            stores[test.distractors] = _store(plan, test.distractors, temporary)
        seconds[test.name] = time.time() - start
    results: Dict[str, DatasetResult] = {}
    world = current_world()  # rank 0 searches, under torchrun too
    for test in plan.sets:
        start = time.time()
        store = stores[test.distractors] if test.distractors is not None else None
        results[test.name] = _searched_by_main(
            world, functools.partial(_search, plan, test, encoded[test.name], lw, store)
        )
        if on_result is not None:
            on_result(results[test.name])
        log.info(">> %s: elapsed time: %s", test.name, htime(seconds[test.name] + time.time() - start))
    return results
