"""Re-ranking: alpha query expansion (αQE) of the queries and database-side augmentation (DBA)
of the database, both on D x N columns of L2-normalised descriptors, and SuperGlobal's
re-ranking of each query's first results (`aml.evaluation.superglobal`).

Both replace a descriptor x by the L2-normalised sum of itself and its K nearest database
descriptors, each weighted by its similarity to x raised to the power alpha (Radenović et
al., TPAMI 2018): ``x' = (x + sum_j max(x^T y_j, 0)^alpha y_j) / ||...||``. Alpha 0 weighs
every neighbour 1 (average query expansion); similarities are clipped at 0 first, so that a
neighbour pointing away never gets a negative (odd alpha) or undefined (fractional alpha)
weight. A query keeps weight 1 (its similarity to itself). DBA takes a database image's
neighbours among the other images (never itself).

The order of a test (`aml.evaluation.testing`): whitening, DBA of the database, the first
search, αQE of the queries with the (augmented) database, the search again, SuperGlobal's
re-ranking of the first results of the last search (with the descriptors it searched with:
whitened, augmented, expanded). The steps after DBA are `search_with_expansion`, the one
"search, αQE, search again, re-rank" of the package: a test runs it on a
`aml.evaluation.database.TestDatabase`, a store of `aml.search` on its database.
"""

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Protocol, Sequence, Tuple, TypeVar

import numpy as np

from aml.evaluation.ranking import (
    NEIGHBOUR_VALUES,
    check_columns,
    check_excluded,
    check_not_rows,
    check_ranking,
    nearest,
)
from aml.evaluation.superglobal import Shortlist, SuperGlobal, superglobal_shortlist
from aml.utils.bounds import NONNEGATIVE_FLOAT, NONNEGATIVE_INT
from aml.utils.errors import ConfigError

T = TypeVar("T")
DEFAULT_ALPHA = 3.0
NEIGHBOURS = NONNEGATIVE_INT  # neighbours of a query or an image
#: the power of the similarities that weigh neighbours: a negative one would weigh the nearest
#: least, a NaN give NaN descriptors
POWER = NONNEGATIVE_FLOAT


@dataclass(frozen=True)
class Reranking:
    """Which re-ranking a test or a search runs: αQE, DBA and SuperGlobal.

    Attributes:
        qe: database neighbours that expand each query (αQE); 0: no query expansion.
        qe_alpha: the power of the neighbours' similarities in αQE (0: average QE); another
            than the default with ``qe=0`` is refused.
        dba: neighbours that augment each database descriptor (DBA); 0: no augmentation.
        dba_alpha: the power of the neighbours' similarities in DBA; as ``qe_alpha``, with ``dba``.
        superglobal: SuperGlobal's re-ranking, last; None: none.

    Examples:
        >>> from aml.evaluation import Reranking
        >>> from aml.evaluation.superglobal import SuperGlobal
        >>> Reranking(qe=2, dba=10).label()
        'dba10 + αqe2'
        >>> Reranking(qe=5, qe_alpha=0).label()
        'αqe5(α=0)'
        >>> Reranking(qe=2, superglobal=SuperGlobal()).label()
        'αqe2 + sg400'
        >>> Reranking(qe=-1)
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: Reranking.qe must be an integer >= 0, got -1
        >>> Reranking(qe_alpha=1)
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: Reranking.qe_alpha=1 with qe=0: no step uses it; give qe K too
    """

    qe: int = 0
    qe_alpha: float = DEFAULT_ALPHA
    dba: int = 0
    dba_alpha: float = DEFAULT_ALPHA
    superglobal: Optional[SuperGlobal] = None

    def __post_init__(self) -> None:
        # a numpy integer as an int (faiss takes no other), a numpy scalar as the float results record
        for name, bound in (("qe", NEIGHBOURS), ("dba", NEIGHBOURS), ("qe_alpha", POWER), ("dba_alpha", POWER)):
            object.__setattr__(self, name, bound.checked(getattr(self, name), f"Reranking.{name}"))
        if self.superglobal is not None and not isinstance(self.superglobal, SuperGlobal):
            raise ConfigError(f"Reranking.superglobal must be a SuperGlobal or None, got {self.superglobal!r}")
        for name in ("qe", "dba"):  # as --qe-alpha without --qe: an alpha no step would use
            alpha = getattr(self, f"{name}_alpha")
            if not getattr(self, name) and alpha != DEFAULT_ALPHA:
                raise ConfigError(f"Reranking.{name}_alpha={alpha:g} with {name}=0: no step uses it; give {name} K too")

    def kept_neighbours(self) -> List[Tuple[str, int]]:
        """The neighbours a search keeps the descriptors of for each query, by flag.

        αQE's K and SuperGlobal's M (0 when it does not run).

        Returns:
            ``[("--qe", K), ("--superglobal", M)]``.

        Examples:
            >>> from aml.evaluation import Reranking
            >>> from aml.evaluation.superglobal import SuperGlobal
            >>> Reranking(qe=2, superglobal=SuperGlobal(m=100)).kept_neighbours()
            [('--qe', 2), ('--superglobal', 100)]
        """
        return [("--qe", self.qe), ("--superglobal", self.superglobal.m if self.superglobal is not None else 0)]

    @property
    def active(self) -> bool:
        """Whether anything is re-ranked."""
        return bool(self.qe or self.dba or self.superglobal)

    def label(self) -> str:
        """What runs, in the order it runs, as results and printed lines name it.

        Returns:
            The steps joined by ``' + '`` (``'dba10 + αqe2 + sg400'``), each alpha named when
            it is not 3 (``'αqe2(α=0)'``), SuperGlobal's k and beta when they are not the
            paper's (``'sg100(k=3)'``); ``''`` when nothing is re-ranked.
        """
        parts: List[str] = []
        if self.dba:
            parts.append(f"dba{self.dba}" + _alpha(self.dba_alpha))
        if self.qe:
            parts.append(f"αqe{self.qe}" + _alpha(self.qe_alpha))
        if self.superglobal is not None:
            parts.append(self.superglobal.label())
        return " + ".join(parts)

    def stages(self) -> List["Reranking"]:
        """The re-ranking done after each step, in order: what each search a test adds ran after.

        Returns:
            DBA alone, then DBA and αQE, then everything with SuperGlobal; only the steps
            that run (``[]`` when nothing is re-ranked).

        Examples:
            >>> from aml.evaluation import Reranking
            >>> [stage.label() for stage in Reranking(qe=2, dba=10).stages()]
            ['dba10', 'dba10 + αqe2']
        """
        dba = Reranking(dba=self.dba, dba_alpha=self.dba_alpha)
        steps = [(self.dba, dba), (self.qe, dataclasses.replace(self, superglobal=None)), (self.superglobal, self)]
        return [stage for runs, stage in steps if runs]


def _alpha(alpha: float) -> str:
    return "" if alpha == DEFAULT_ALPHA else f"(α={alpha:g})"


def weighted_expansion(vectors: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """The formula of both αQE and DBA: each descriptor plus its weighted neighbours, L2-normalised.

    A neighbour's weight is its similarity to the descriptor, clipped at 0, raised to ``alpha``.

    Args:
        vectors: D x Q descriptors (queries, or database images).
        neighbours: D x K x Q, column q of ``neighbours[:, :, q]`` holding the K neighbours
            of ``vectors[:, q]``.
        alpha: the power of the similarities (0: every neighbour weighs 1).

    Returns:
        D x Q float32 expanded descriptors (a zero sum stays zero).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.reranking import weighted_expansion
        >>> q = np.array([[1.0], [0.0]], dtype=np.float32)
        >>> y = np.array([[[0.6]], [[0.8]]], dtype=np.float32)  # one neighbour, similarity 0.6
        >>> weighted_expansion(q, y, alpha=1).round(4)  # (1 + 0.36, 0.48) / 1.4422
        array([[0.943 ],
               [0.3328]], dtype=float32)
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    neighbours = np.asarray(neighbours)
    alpha = POWER.checked(alpha, "alpha")
    expanded = np.empty_like(vectors)
    for columns in _column_chunks(vectors.shape, neighbours.shape[1]):
        expanded[:, columns] = _expand(vectors[:, columns], neighbours[:, :, columns], alpha)
    return expanded


def _column_chunks(shape: Sequence[int], k: int) -> Iterator[slice]:
    """Columns of a D x N matrix by chunks whose D x k x n neighbours fit `NEIGHBOUR_VALUES`
    (one rule for every caller, so that a column's result never depends on who computed it)."""
    step = max(1, NEIGHBOUR_VALUES // max(shape[0] * k, 1))
    for start in range(0, shape[1], step):
        yield slice(start, start + step)


def _expand(vectors: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """`weighted_expansion` of one chunk of columns."""
    neighbours = np.ascontiguousarray(neighbours, dtype=np.float32)
    similarities = np.einsum("dkq,dq->kq", neighbours, vectors)
    weights = np.maximum(similarities, 0) ** np.float32(alpha)  # 0 ** 0 == 1: alpha 0 is the average
    return _normalised(vectors + np.einsum("dkq,kq->dq", neighbours, weights))


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=0, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def alpha_query_expansion(
    queries: np.ndarray, database: np.ndarray, neighbours: np.ndarray, k: int, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """Alpha query expansion (αQE) of the queries with their first database neighbours.

    Each query is replaced by the normalised sum of itself and its ``k`` first database
    neighbours, weighted by their similarity to it raised to ``alpha`` (`weighted_expansion`).

    Args:
        queries: D x Q query descriptors (in asymmetric tests: the student's).
        database: D x N database descriptors (the teacher's), the space of ``neighbours``.
        neighbours: the first search's ranking, N x Q (or at least k x Q) database indices,
            column q best first, as `aml.evaluation.rank_database` returns it.
        k: neighbours per query (1 <= k <= rows of ``neighbours``).
        alpha: the power of the similarities (0: average query expansion).

    Returns:
        D x Q float32 expanded queries.

    Raises:
        ConfigError: when ``k`` is not in [1, rows of ``neighbours``], the descriptors are not
            D x N columns of one D, or ``neighbours`` is not a ranking of ``database`` for
            these queries (`aml.evaluation.ranking.check_ranking`).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import alpha_query_expansion, rank_database
        >>> database = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], dtype=np.float32)
        >>> query = np.array([[0.8], [0.6]], dtype=np.float32)
        >>> ranks = rank_database(database, query)  # 0 (0.8), 2 (0.96), 1 (0.6): [2, 0, 1]
        >>> alpha_query_expansion(query, database, ranks, k=1, alpha=0).round(4)  # (0.8 + 0.6, 0.6 + 0.8) / |.|
        array([[0.7071],
               [0.7071]], dtype=float32)
    """
    queries, database = np.asarray(queries, dtype=np.float32), np.asarray(database, dtype=np.float32)
    neighbours = np.asarray(neighbours)
    check_columns(database, queries)
    check_ranking(neighbours, queries.shape[1], database.shape[1], "αQE")
    k, alpha = NEIGHBOURS.checked(k, "αQE's k"), POWER.checked(alpha, "αQE's alpha")
    if not 1 <= k <= neighbours.shape[0]:
        raise ConfigError(f"αQE with k={k}: the ranking holds {neighbours.shape[0]} database images per query")
    return _expand_with(queries, database, neighbours[:k], alpha)


def _expand_with(vectors: np.ndarray, database: np.ndarray, top: np.ndarray, alpha: float) -> np.ndarray:
    """`weighted_expansion` of ``vectors`` with the database columns ``top`` (k x N) as their
    neighbours, gathered chunk by chunk: memory holds one chunk's neighbours, whatever k."""
    expanded = np.empty_like(vectors)
    for columns in _column_chunks(vectors.shape, top.shape[0]):
        expanded[:, columns] = _expand(vectors[:, columns], database[:, top[:, columns]], alpha)
    return expanded


def database_augmentation(
    database: np.ndarray, k: int, alpha: float = DEFAULT_ALPHA, device: str = "cpu", excluded: Sequence[int] = ()
) -> np.ndarray:
    """Database-side augmentation (DBA) of the database with its own nearest neighbours.

    Each database descriptor is replaced by the normalised sum of itself and its ``k``
    nearest other database descriptors, weighted by their similarity raised to ``alpha``
    (`weighted_expansion`). The neighbours are found with the same ordering as `aml.evaluation.rank_database` (equal
    scores in database order), an image never being its own neighbour; ``k`` = 0 returns the
    database unchanged.

    Args:
        database: D x N database descriptors.
        k: neighbours per image (0 <= k < N less the ``excluded``).
        alpha: the power of the similarities.
        device: where the neighbours are searched.
        excluded: database images (unreadable, skipped) that are nobody's neighbour and stay
            as they are.

    Returns:
        D x N float32 augmented descriptors.

    Raises:
        ConfigError: when ``k`` is negative, or not below the number of images that are not
            ``excluded`` (an image would take itself or an excluded one), or the descriptors
            are not D x N columns (`aml.evaluation.ranking.check_not_rows`).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import database_augmentation
        >>> database = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], dtype=np.float32)
        >>> database_augmentation(database, k=1, alpha=0).round(4)  # 0 and 1 each take 2, 2 takes 1
        array([[0.8944, 0.3162, 0.3162],
               [0.4472, 0.9487, 0.9487]], dtype=float32)
    """
    database = np.asarray(database, dtype=np.float32)
    if database.ndim != 2:
        raise ConfigError(f"DBA: the database is {database.shape}: descriptors are D x N, one column per image")
    check_not_rows(database, "database")
    k, alpha = NEIGHBOURS.checked(k, "DBA's k"), POWER.checked(alpha, "DBA's alpha")
    n = database.shape[1]
    check_excluded(excluded, n)
    readable = n - len(set(excluded))  # the others are nobody's neighbour
    if not 0 <= k < max(readable, 1):
        unread = f" ({n - readable} could not be read)" if readable < n else ""
        raise ConfigError(
            f"DBA with k={k}: the database holds {readable} images{unread}, so each has at most "
            f"{readable - 1} neighbours"
        )
    if k == 0:
        return database.copy()
    top = nearest(database, database, k, device=device, excluded=excluded, skip_self=True)  # k x N
    augmented = _expand_with(database, database, top, alpha)
    if len(excluded):
        augmented[:, list(excluded)] = database[:, list(excluded)]
    return augmented


class Database(Protocol):
    """What αQE and SuperGlobal ask of a database: each query's first neighbours, with their
    descriptors, and how many images a query can find."""

    @property
    def searchable(self) -> int:
        """The images a query can find (those that could be read)."""

    def nearest(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` best database images.

        Args:
            queries: D x Q descriptors.
            k: neighbours per query.

        Returns:
            Their k x Q indices, best first, and their D x k x Q descriptors (zero where a
            query has fewer than ``k``, with index -1).
        """


#: a search of D x Q queries: what it gives (the metrics of a test, a store's top k), with the
#: first results of each query replaced by a `Shortlist` when one is given
Search = Callable[[np.ndarray, Optional[Shortlist]], T]


def search_with_expansion(
    database: Database,
    queries: np.ndarray,
    reranking: Reranking,
    search: Search[T],
    first: bool = True,
    expanded: bool = True,
) -> List[T]:
    """Search, expand the queries (αQE) and search again, re-rank the first results (SuperGlobal).

    Each step after the first search runs when ``reranking`` asks for it. The one "search,
    αQE, search again, re-rank" of the package: test.py runs it on the test set's database
    (with its distractors), a store of `aml.search` on the teacher's database. SuperGlobal
    re-ranks the first M results of the last search (of the expanded queries with αQE) with
    the descriptors that search used; M is at most the images a query can find.

    Args:
        database: where the neighbours are found (`Database`).
        queries: D x Q query descriptors (in asymmetric tests: the student's).
        reranking: its ``qe``, ``qe_alpha`` and ``superglobal`` are used (DBA is the
            database's own).
        search: what a search of queries gives, with a `Shortlist` in front when given
            (`Search`).
        first: also give the first search's result; False: only those after it (the
            neighbours are found all the same).
        expanded: also give the search of the expanded queries when SuperGlobal re-ranks it;
            False: only SuperGlobal's.

    Returns:
        The searches' results in order: the first (with ``first``), the search of the
        expanded queries (with ``reranking.qe``), SuperGlobal's re-ranking of the last search
        (with ``reranking.superglobal``).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import Reranking, search_with_expansion
        >>> from aml.evaluation.database import TestDatabase
        >>> database = TestDatabase(np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], dtype=np.float32))
        >>> query = np.array([[0.8], [0.6]], dtype=np.float32)
        >>> scores = lambda q, shortlist: (q.T @ database.vecs).astype(float).round(2).tolist()  # the 3 images' scores
        >>> search_with_expansion(database, query, Reranking(qe=1, qe_alpha=0), scores)  # towards image 2
        [[[0.8, 0.6, 0.96]], [[0.71, 0.71, 0.99]]]
    """
    superglobal = reranking.superglobal
    results = [search(queries, None)] if first or not (reranking.qe or superglobal) else []
    if reranking.qe:
        _, neighbours = database.nearest(queries, reranking.qe)
        queries = weighted_expansion(queries, neighbours, reranking.qe_alpha)
        if expanded or superglobal is None:
            results.append(search(queries, None))
    if superglobal is not None:
        indices, top = database.nearest(queries, min(superglobal.m, database.searchable))
        results.append(search(queries, superglobal_shortlist(indices, top, queries, superglobal)))
    return results
