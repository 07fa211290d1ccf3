"""A store as a query sees it: the teacher's database descriptors in memory (whitened, and
augmented with DBA when the store was indexed so), searched exactly or with the store's IVF-PQ
index; `open_database` (`aml.search.store`) loads one from a store folder."""

import hashlib
import json
import logging
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Final, List, Optional, Tuple, TypedDict

import numpy as np

from aml.data.download import file_sha256
from aml.descriptors.store import MANIFEST
from aml.evaluation.ranking import even_parts, most_neighbours
from aml.evaluation.reranking import Reranking, search_with_expansion
from aml.evaluation.superglobal import Shortlist
from aml.evaluation.whitening import whitened
from aml.evaluation.whitening_store import Whitening
from aml.search.faiss_index import (
    PQ_CODES,
    ExactIndex,
    faiss_or_none,
    in_tie_order,
    read_index,
    train_ivfpq,
    write_index,
)
from aml.utils.atomic import atomic_write, folder_identity, folder_lock
from aml.utils.distributed import warn_once
from aml.utils.errors import DataError
from aml.utils.text_files import read_bounded

log = logging.getLogger(__name__)

# the files of a store folder besides the descriptor store's own (aml.descriptors.store)
SEARCH = "search.json"  # what the query side checks: the teacher the store was indexed with
WHITENING = "whitening.pth"
DBA = "dba.npy"  # the descriptors after database-side augmentation (whitened first)
INDEX = "index.faiss"
#: a new IVF-PQ index recorded in search.json before it is renamed to index.faiss: a build
#: stopped between the two leaves the store searchable with it (`index_path`)
PENDING_INDEX = ".index.faiss.new"
REBUILD = "python -m aml.search index"
FILES: Final = "files"  # search.json's sha256 of each of the store's files besides the shards


class StoreError(DataError):
    """A store is missing, incomplete, or was encoded by another network than the student's teacher.

    A ValueError whose message names what is wrong and how to fix it.

    Examples:
        >>> from aml.search import StoreError, open_database
        >>> try:
        ...     open_database("no/such.store")
        ... except StoreError as err:
        ...     print(str(err).split(";")[0])
        the store no/such.store does not exist
    """


def check_results_wanted(k: Any) -> None:
    """Refuse a number of results per query that is not a whole number above 0 (0 gave no
    results without a word; -1 was numpy's error deep in the search).

    Args:
        k: the results per query asked for.

    Raises:
        StoreError: naming the value and the flag.

    Examples:
        >>> from aml.search.database import check_results_wanted
        >>> check_results_wanted(10)
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise StoreError(f"k {k!r}: the results per query are a whole number > 0 (search query -k)")


@dataclass(frozen=True)
class IvfPq:
    """The shape of an IVF-PQ index: ``nlist`` inverted lists, ``m`` sub-quantisers of 8 bits.

    Attributes:
        nlist: the inverted lists.
        m: the sub-quantisers; the dimension must be a multiple of it.

    Examples:
        >>> from aml.search import IvfPq
        >>> IvfPq(64, 32).problem(count=100, dim=512).split(";")[0]
        '--ivfpq 64,32 needs at least 256 database images (8-bit codes)'
        >>> IvfPq(64, 32).problem(count=10000, dim=512) is None
        True
    """

    nlist: int
    m: int

    def problem(self, count: int, dim: int) -> Optional[str]:
        """Why this index cannot be built over ``count`` descriptors of ``dim`` dimensions.

        Known before any image is encoded.

        Args:
            count: the database images.
            dim: their dimension.

        Returns:
            What is wrong, with the fix, or None when it can be built.
        """
        flag = f"--ivfpq {self.nlist},{self.m}"
        if faiss_or_none() is None:
            return f"{flag} needs faiss: pip install faiss-cpu"
        if count < max(PQ_CODES, self.nlist):
            return (
                f"{flag} needs at least {max(PQ_CODES, self.nlist)} database images (8-bit codes); the store "
                f"has {count}: search it exactly (without --ivfpq)"
            )
        if dim % self.m:
            return f"{flag}: the dimension {dim} is not a multiple of {self.m} sub-quantisers"
        return None


class DbaRecord(TypedDict):
    """The DBA a store was indexed with: its neighbours and their weight exponent."""

    k: int
    alpha: float


class IvfPqRecord(TypedDict):
    """A store's IVF-PQ index: its lists, sub-quantisers and measured recall."""

    nlist: int
    m: int
    recall: float


class SearchRecord(TypedDict, total=False):
    """A store's ``search.json``: the teacher as the user named it (``source``), the DBA and the
    IVF-PQ index it was indexed with, and the sha256 of its files besides the shards."""

    source: str
    dba: DbaRecord
    ivfpq: IvfPqRecord
    files: Dict[str, str]


class _StoreSettings(TypedDict):
    network: str
    source: str
    fingerprint: str
    image_size: int
    scales: List[float]
    dim: int


class StoreSettings(_StoreSettings, total=False):
    """How a store was made: the fields of every store (the teacher's name and how the user
    named it, its fingerprint, the image size, scales and dimension), those of a sharded store's
    manifest (``msp``, ``pixels``, ``dtype``, ``shard_size``) and of its ``search.json``."""

    msp: float
    pixels: str
    dtype: str
    shard_size: int
    dba: DbaRecord
    ivfpq: IvfPqRecord
    files: Dict[str, str]


#: queries searched at once without an expansion: all of them
EVERY_QUERY = 1 << 62


@dataclass
class SearchDatabase:
    """A store's database, loaded for search: the teacher's descriptors, searched with queries.

    `aml.search.open_database` loads one from a store folder; `aml.search.query_database`
    encodes query images and searches it.

    Attributes:
        folder: the store's folder.
        vecs: D x N float32 database descriptors, whitened when the store has a whitening
            (and augmented when it was indexed with DBA).
        images: the N database images, in column order.
        settings: how the store was made (network, source, fingerprint, image_size, scales,
            dim, ``dba`` when it was augmented: ``{"k", "alpha"}``, ...).
        whitening: the teacher's learned whitening (m, P), applied to both sides, or None.
        manifest: the sha256 of the store's ``manifest.json`` when it was opened (None: not
            read from a sharded store), which tells whether the folder was indexed again since.
        identity: the store folder's device and inode when it was opened (None: not read
            from a folder): an indexing renames a new folder into place, so this tells a new
            indexing of the same images (the same manifest) with another DBA or whitening.

    Examples:
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from aml.search import SearchDatabase, open_database
        >>> database = SearchDatabase(Path("no/such.store"), np.eye(3, dtype=np.float32), ["a.jpg", "b.jpg", "c.jpg"],
        ...                           {})
        >>> scores, indices = database.search(np.array([[0.0], [0.6], [0.8]]), k=2)
        >>> indices, scores.round(2)
        (array([[2, 1]]), array([[0.8, 0.6]], dtype=float32))
        >>> database = open_database("photos.store")  # doctest: +SKIP
    """

    folder: Path
    vecs: np.ndarray  # D x N, whitened when the store has a whitening
    images: List[str]
    settings: StoreSettings
    whitening: Optional[Whitening] = None
    manifest: Optional[str] = None
    identity: Optional[Tuple[int, int]] = None
    #: what answers the searches, read or made at the first one and kept: the store's IVF-PQ
    #: index, else an ExactIndex over ``vecs``
    index: Any = field(default=None, init=False, repr=False, compare=False)
    #: the student `aml.search.query_database` last checked against the store, with its teacher
    #: and weights' versions (or the ONNX file `query_database_onnx` last checked, with its
    #: metadata): a loop of queries checks it once, not at each call
    checked: Any = field(default=None, init=False, repr=False, compare=False)

    def search(
        self, queries: np.ndarray, k: int, prewhitened: bool = False, reranking: Reranking = Reranking()
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best database images of each query, best first.

        The queries are whitened like the database when the store has a whitening. The
        search is exact (faiss ``IndexFlatIP`` when faiss is installed, else matrix products
        with torch, a few queries at a time) unless the store holds an IVF-PQ index. With ``reranking.qe``,
        each query is expanded (αQE) with its first results and searched again; with
        ``reranking.superglobal``, the first M results of the (last) search are re-ranked the
        SuperGlobal way and come first, with their SuperGlobal scores
        (`aml.evaluation.reranking.search_with_expansion`, as a test does).

        Args:
            queries: D x Q query descriptors.
            k: results per query (at most the database's size).
            prewhitened: the queries are whitened already (an exported student with the
                store's whitening folded in).
            reranking: its ``qe`` and ``qe_alpha`` (αQE) and ``superglobal``; the store's DBA
                was applied when it was indexed (a ``dba`` other than the store's is refused).

        Returns:
            The scores and the database indices, each Q x k, best first.

        Raises:
            StoreError: when ``k`` is not a whole number above 0, the queries are not finite
                descriptors of the store's dimension, the store's IVF-PQ index is damaged or
                belongs to another store, or ``reranking.qe`` or ``reranking.superglobal``'s M
                exceeds the store's size or the neighbours a search may keep for one query
                (`aml.evaluation.ranking.most_neighbours`: queries are expanded as many at a time
                as that allows), or ``reranking.dba`` is not the store's.
            WhiteningError: when whitening makes a query NaN or infinite.
        """
        check_results_wanted(k)
        self._check_dba(reranking)
        queries = self._checked(queries, prewhitened)
        group = self._queries_at_once(reranking)

        def top(q: np.ndarray, shortlist: Optional[Shortlist]) -> Tuple[np.ndarray, np.ndarray]:
            found = self._top(q, k)
            return found if shortlist is None else shortlist.ahead_of(*found)

        parts = [  # no query: one empty search
            search_with_expansion(self, queries[:, part], reranking, top, first=False, expanded=False)[-1]
            for part in even_parts(queries.shape[1], group)
        ]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([scores for scores, _ in parts]), np.concatenate([found for _, found in parts])

    def _check_dba(self, reranking: Reranking) -> None:
        """Refuse a DBA other than the store's: DBA is applied when a store is indexed."""
        dba = self.settings.get("dba")
        indexed = (dba["k"], float(dba["alpha"])) if dba is not None else (0, reranking.dba_alpha)
        if reranking.dba and (reranking.dba, reranking.dba_alpha) != indexed:
            raise StoreError(
                f"DBA of {reranking.dba} neighbours (alpha {reranking.dba_alpha:g}): the store {self.folder} was "
                f"indexed with {f'--dba {indexed[0]} --dba-alpha {indexed[1]:g}' if dba else 'no DBA'}, and DBA "
                f"is applied when a store is indexed; index it again with --dba {reranking.dba} --dba-alpha "
                f"{reranking.dba_alpha:g}"
            )

    def _queries_at_once(self, reranking: Reranking) -> int:
        """How many queries αQE and SuperGlobal expand at once (each on its own: as many as their
        neighbours' descriptors allow, `most_neighbours`, the K of αQE and the M of SuperGlobal
        held together; every query at once without them); a K or M past the store's size, or
        past what one query may keep, is refused. (Queries searched apart may see the last bits
        of their scores, and so the order of near-ties, differ from one search of all.)"""
        size, most = self.searchable, most_neighbours(1, self.vecs.shape[0])
        kept = reranking.kept_neighbours()
        for flag, asked in kept:
            if asked > size:
                raise StoreError(
                    f"{flag} {asked}: the store {self.folder} holds {size} images; give {flag} {size} or less"
                )
            if asked > most:  # their descriptors are gathered for a query at once
                raise StoreError(
                    f"{flag} {asked}: a query's {asked} nearest {self.vecs.shape[0]}-d descriptors would take more "
                    f"than a search is given; give {flag} {most} or less"
                )
        held = sum(asked for _, asked in kept)
        if held > most:
            raise StoreError(
                f"{' with '.join(f'{flag} {asked}' for flag, asked in kept)}: a query's {held} nearest "
                f"{self.vecs.shape[0]}-d descriptors would take more than a search is given; give fewer in all "
                f"than {most + 1}"
            )
        return most // held if held else EVERY_QUERY  # no expansion: one search

    @property
    def searchable(self) -> int:
        """The images a query can find: all of the store's."""
        return self.vecs.shape[1]

    def _checked(self, queries: np.ndarray, prewhitened: bool) -> np.ndarray:
        """The queries as D x Q finite descriptors of the store's space (whitened unless
        ``prewhitened``), or a StoreError: a NaN scores as nothing and would rank silently."""
        whiten = self.whitening is not None and not prewhitened
        dim = self.whitening[0].size if whiten and self.whitening is not None else self.vecs.shape[0]
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[0] != dim:
            raise StoreError(
                f"the queries are descriptors of shape {queries.shape}, but the store {self.folder} takes "
                f"{dim} x Q ({dim}-d, one column per query)"
            )
        bad = int((~np.isfinite(queries)).any(axis=0).sum())
        if bad:
            raise StoreError(
                f"{bad} of the {queries.shape[1]} query descriptors hold NaN or infinite values: they cannot be "
                "searched (the student or the ONNX file that encoded them is damaged)"
            )
        if whiten and self.whitening is not None:
            queries = whitened(queries, self.whitening, "query")
        return queries

    def nearest(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` first results, with their descriptors (what αQE expands with).

        Args:
            queries: D x Q query descriptors, in the store's (whitened) space.
            k: results per query.

        Returns:
            k x Q database indices, best first (-1 where an IVF-PQ search found fewer), and
            their D x k x Q descriptors (zero where none was found).
        """
        _, found = self._top(queries, k)
        neighbours = self.vecs[:, found.T]  # D x k x Q
        neighbours[:, found.T < 0] = 0
        return found.T, neighbours

    def _top(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            ivfpq = self._read_ivfpq()
            self.index = ivfpq if ivfpq is not None else ExactIndex(self.vecs)
        rows = np.ascontiguousarray(queries.T, dtype=np.float32)
        k = min(int(k), self.vecs.shape[1])  # a numpy integer too: faiss takes Python ints alone
        found = self.index.search(rows, k)
        if hasattr(self.index, "nprobe"):  # an IVF-PQ index: its probed lists may hold fewer than k images
            found = _widened(self.index, rows, k, found)
        return in_tie_order(*found)  # IVF-PQ leaves ties in any order (exact search's are in order already)

    def _read_ivfpq(self) -> Any:
        """The store's IVF-PQ index, checked against the store, or None when it has none.

        It is read at the first search; a store whose ``search.json`` records its files' sha256
        uses only the index it recorded when it was opened, byte for byte (an indexing of the
        folder meanwhile would otherwise pair the new store's index with the old descriptors)."""
        listed = self.settings.get(FILES)
        index_file = index_path(self.folder, listed.get(INDEX) if listed is not None else None)
        if (listed is not None and INDEX not in listed) or not index_file.is_file():
            return None
        if faiss_or_none() is None:
            warn_once(
                log,
                ">> %s holds an IVF-PQ index, but faiss is not installed: the store is searched exactly, a matrix "
                "product per query over all its images (pip install faiss-cpu to use the index)",
                self.folder,
            )
            return None
        data = index_file.read_bytes()  # once: the bytes checked are the bytes used
        if listed is not None and hashlib.sha256(data).hexdigest() != listed[INDEX]:
            raise StoreError(
                f"{index_file} is not the index the store had when it was opened (the folder was indexed again "
                "meanwhile): open the store again"
            )
        try:
            index = read_index(data)
        except RuntimeError as err:
            raise StoreError(
                f"cannot read {index_file} ({str(err).splitlines()[0]}): it is damaged; delete it or "
                f"rebuild it with: {REBUILD} --ivfpq"
            ) from None
        if index is None:
            return None
        if index.metric_type != faiss_or_none().METRIC_INNER_PRODUCT:
            raise StoreError(
                f"{index_file} ranks by another metric than the inner product of the store's descriptors: "
                f"it was not built by aml; delete it or rebuild it with: {REBUILD} --ivfpq"
            )
        if (index.ntotal, index.d) != self.vecs.shape[::-1]:
            raise StoreError(
                f"{index_file} indexes {index.ntotal} vectors of {index.d} dimensions but the store "
                f"holds {self.vecs.shape[1]} of {self.vecs.shape[0]}: it belongs to another store; "
                f"delete it or rebuild it with: {REBUILD} --ivfpq"
            )
        return index


def _widened(
    index: Any, rows: np.ndarray, k: int, found: Tuple[np.ndarray, np.ndarray]
) -> Tuple[np.ndarray, np.ndarray]:
    """An IVF-PQ search's results, with the queries that found fewer than ``k`` (the lists
    they probe hold fewer images) searched again probing twice as many lists, until each
    has ``k``: every list probed reaches every image. The index's ``nprobe`` comes back."""
    scores, ids = found
    probed = index.nprobe
    try:
        while (short := (ids < 0).any(axis=1)).any() and index.nprobe < index.nlist:
            index.nprobe = min(2 * index.nprobe, index.nlist)
            log.info(">> %d queries found fewer than %d results: probing %d lists", int(short.sum()), k, index.nprobe)
            scores[short], ids[short] = index.search(rows[short], k)
    finally:
        index.nprobe = probed
    return scores, ids


def build_ivfpq(
    database: SearchDatabase, nlist: int, m: int, nprobe: int = 16, k: int = 10, sample: int = 200, seed: int = 0
) -> float:
    """Train and save an IVF-PQ index over a store; return its recall@k against exact search.

    The index (``index.faiss`` in the store's folder) has ``nlist`` lists and ``m``
    sub-quantisers of 8 bits; ``sample`` database descriptors serve as the queries of the
    recall. The store's ``search.json`` records the index's sha256 and its recall; the index
    and its record are written under the store's lock, so that two builds at once leave one
    index with its own record. ``database`` searches with the new index from then on.

    Args:
        database: the store's database (`aml.search.open_database`).
        nlist: the inverted lists.
        m: the sub-quantisers; the dimension must be a multiple of it.
        nprobe: the lists searched per query (at most ``nlist``).
        k: the k of recall@k.
        sample: the database descriptors drawn as queries.
        seed: the seed of their draw.

    Returns:
        The recall@k of the index against exact search, in [0, 1].

    Raises:
        StoreError: without faiss, with fewer database images than 256 (and than ``nlist``),
            or with a dimension that is not a multiple of ``m`` (`IvfPq.problem`); or when the
            store was indexed again since it was opened.

    Examples:
        >>> from aml.search import build_ivfpq, open_database
        >>> build_ivfpq(open_database("photos.store"), nlist=64, m=32)  # doctest: +SKIP
        0.94
    """
    # the lock an indexing of the store holds (beside it, the folder is replaced): never an index
    # of the old descriptors written into the new store, nor two builds' index and record mixed
    with folder_lock(database.folder.resolve(), fix="wait for the indexing to end", beside=True, wait=True):
        return write_ivfpq(database, IvfPq(nlist, m), nprobe, k, sample, seed)


def write_ivfpq(
    database: SearchDatabase, ivfpq: IvfPq, nprobe: int = 16, k: int = 10, sample: int = 200, seed: int = 0
) -> float:
    """`build_ivfpq` for a caller that holds the store's lock already (an indexing, into the
    store it is building).

    Args:
        database: the store's database.
        ivfpq: the lists and sub-quantisers.
        nprobe: the lists searched per query.
        k: the k of recall@k.
        sample: the database descriptors held out as queries.
        seed: the seed of their draw.

    Returns:
        The recall@k of the index against exact search.

    Raises:
        StoreError: as `build_ivfpq`.

    Examples:
        >>> from aml.search.database import IvfPq, write_ivfpq
        >>> write_ivfpq(open_database("photos.store"), IvfPq(64, 32))  # doctest: +SKIP
        0.94
    """
    dim, n = database.vecs.shape
    problem = ivfpq.problem(n, dim)
    if problem:
        raise StoreError(problem)
    nlist, m = ivfpq.nlist, ivfpq.m
    manifest = database.folder / MANIFEST  # checked before training: under the lock, nothing changes it after
    replaced = database.identity is not None and folder_identity(database.folder) != database.identity
    if replaced or (
        database.manifest is not None and (not manifest.is_file() or file_sha256(manifest) != database.manifest)
    ):
        raise StoreError(
            f"the store {database.folder} was indexed again since it was opened: its index would be of the "
            "old descriptors; open the store again and build the index on it"
        )
    index, recall = train_ivfpq(database.vecs, nlist, m, nprobe, k, sample, seed)
    pending = database.folder / PENDING_INDEX  # recorded, then renamed: the store opens at every step
    write_index(index, pending)
    _record_index(database.folder, {"nlist": nlist, "m": m, "recall": recall}, file_sha256(pending))
    os.replace(pending, database.folder / INDEX)
    database.index = index
    return recall


def index_path(folder: Path, recorded: Optional[str]) -> Path:
    """The store's IVF-PQ index file: ``index.faiss``, or the new index a build stopped before
    renaming it (`PENDING_INDEX`), when that one holds the sha256 ``search.json`` records.

    Args:
        folder: the store.
        recorded: the index's sha256 that ``search.json`` records (None: none).

    Returns:
        The file to read the index from.
    """
    pending = folder / PENDING_INDEX
    if recorded is not None and pending.is_file() and file_sha256(pending) == recorded:
        return pending
    return folder / INDEX


def _record_index(folder: Path, settings: IvfPqRecord, sha256: str) -> None:
    """Add the index's ``sha256`` and settings to the store's ``search.json`` (a store indexed by
    an aml that recorded no hashes, or a database not read from a store folder, has none to
    add to)."""
    path = folder / SEARCH
    try:
        record = json.loads(read_bounded(path))
    except (OSError, ValueError):
        return
    if not isinstance(record, dict) or not isinstance(record.get(FILES), dict):
        return
    record[FILES][INDEX] = sha256
    record["ivfpq"] = settings
    atomic_write(path, lambda out: out.write(json.dumps(record).encode()))
