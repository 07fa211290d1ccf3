"""SuperGlobal's re-ranking of a query's first results with global descriptors only.

Shao et al., "Global Features are All You Need for Image Retrieval and Reranking", ICCV 2023,
re-rank the first ``m`` results of a query in two steps, both inside that short list:

1. *Descriptor augmentation* of each of the ``m`` images by its ``k`` nearest neighbours
   among them: ``x'_i = (x_i + beta * sum_j s_ij x_j) / (1 + beta * sum_j s_ij)``, s_ij the
   cosine similarity of neighbour j to image i. The query's similarity to the augmented
   descriptors, ``s1_i = q . x'_i``, orders the list a first time.
2. *Query expansion by the maximum*: the element-wise maximum of the augmented descriptors of
   the ``k + 1`` images first by s1 is a second query, ``s2_i = max_j(x'_j) . x'_i``; the
   final score is ``(s1_i + s2_i) / 2``.

The images below the first ``m`` keep their places. The formulas are those of the authors' code
(``modules/reranking/MDescAug.py`` and ``RerankwMDA.py`` of ShihaoShao-GH/SuperGlobal), which
made the paper's numbers: s2 compares the expanded query with the *augmented* descriptors, and
the query itself is not among those the maximum is taken over. Its defaults, with which its
``test.py`` re-ranks rOxford and rParis (with and without the 1M distractors), are the values
here: ``m = 400``, ``k = 9``, ``beta = 0.15``. Unlike that code, a neighbour's similarity is
clipped at 0 before it weighs (as aml's αQE and DBA do), so that a neighbour pointing away
never subtracts and the denominator stays at least 1; among an image's nearest neighbours a
negative similarity is rare. Descriptors are D x N columns of L2-normalised vectors and
rankings N x Q columns of database indices (cirtorch's conventions).
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from aml.evaluation.ranking import check_columns, check_ranking
from aml.utils.bounds import NONNEGATIVE_FLOAT, NONNEGATIVE_INT, POSITIVE_INT
from aml.utils.errors import ConfigError, DataError

#: the defaults of the authors' code (MDescAug and RerankwMDA), which its test.py uses for the
#: paper's rOxford and rParis numbers
PAPER_M, PAPER_K, PAPER_BETA = 400, 9, 0.15


@dataclass(frozen=True)
class SuperGlobal:
    """SuperGlobal's re-ranking settings.

    Attributes:
        m: the first results of a query that are re-ranked.
        k: the neighbours that augment a descriptor, and the results (k + 1) whose maximum
            expands the query.
        beta: the weight of the neighbours against the descriptor itself; another than the
            paper's with ``k=0`` (no neighbours) is refused.

    Examples:
        >>> from aml.evaluation.superglobal import SuperGlobal
        >>> SuperGlobal().label(), SuperGlobal(m=100, k=3).label()
        ('sg400', 'sg100(k=3)')
    """

    m: int = PAPER_M
    k: int = PAPER_K
    beta: float = PAPER_BETA

    def __post_init__(self) -> None:  # numpy's numbers as Python's, which faiss and the results take
        for name, bound in (("m", POSITIVE_INT), ("k", NONNEGATIVE_INT), ("beta", NONNEGATIVE_FLOAT)):
            object.__setattr__(self, name, bound.checked(getattr(self, name), f"SuperGlobal.{name}"))
        if self.k == 0 and self.beta != PAPER_BETA:  # as --sg-beta with --sg-k 0
            raise ConfigError(f"SuperGlobal.beta={self.beta:g} with k=0: no neighbour is weighed; give k >= 1")

    def label(self) -> str:
        """Its name in results and printed lines.

        Returns:
            ``'sg<m>'``, with k and beta named when they are not the paper's (``'sg100(k=3)'``).
        """
        named = [f"k={self.k}"] * (self.k != PAPER_K) + [f"β={self.beta:g}"] * (self.beta != PAPER_BETA)
        return f"sg{self.m}" + (f"({','.join(named)})" if named else "")


def augmented_descriptors(x: np.ndarray, k: int, beta: float) -> np.ndarray:
    """Each row of ``x`` (M x D) averaged with its ``k`` nearest other rows, weighted
    ``beta`` times their (clipped) similarity, the row itself 1.

    Args:
        x: M x D L2-normalised descriptors, one per row.
        k: the neighbours of each row.
        beta: the neighbours' weight factor.

    Returns:
        M x D augmented descriptors (not normalised again, as the paper's).

    Examples:
        >>> import numpy as np
        >>> augmented_descriptors(np.array([[1.0, 0.0], [0.6, 0.8]]), k=1, beta=0.5).round(4)
        array([[0.9077, 0.1846],
               [0.6923, 0.6154]])
    """
    count = len(x)
    k = min(k, count - 1)
    if k <= 0:
        return x.copy()
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)  # the row itself is not its own neighbour
    neighbours = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = beta * np.clip(np.take_along_axis(sim, neighbours, axis=1), 0, None)  # M x k
    total = x + np.einsum("mk,mkd->md", weights, x[neighbours])
    return total / (1.0 + weights.sum(axis=1, keepdims=True))


def superglobal_scores(top: np.ndarray, query: np.ndarray, k: int, beta: float) -> np.ndarray:
    """SuperGlobal's final score of each of a query's top results.

    Args:
        top: M x D descriptors of the query's top results, in their first order.
        query: the D-dimensional query descriptor.
        k: neighbours and expansion size (see the module docstring).
        beta: the neighbours' weight factor.

    Returns:
        M scores, ``(q . x'_i + max_j(x'_j) . x'_i) / 2`` with j over the k + 1 results
        first by ``q . x'``.
    """
    augmented = augmented_descriptors(top, k, beta)
    first = augmented @ query
    leaders = np.argsort(-first, kind="stable")[: k + 1]
    expanded = augmented[leaders].max(axis=0)
    return (first + augmented @ expanded) / 2


@dataclass(frozen=True)
class Shortlist:
    """Each query's first results after SuperGlobal's re-ranking, in their new order.

    Attributes:
        indices: M x Q database indices, column q best first (-1: no result, at the end).
        scores: M x Q SuperGlobal scores, in the same order (-inf where there is no result).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.superglobal import Shortlist
        >>> shortlist = Shortlist(np.array([[1], [0]]), np.array([[0.9], [0.8]]))
        >>> shortlist.places(np.array([[0], [1], [2]]))[:, 0]  # images 0 and 1 swap, 2 stays
        array([1, 0, 2])
    """

    indices: np.ndarray
    scores: np.ndarray

    def places(self, places: np.ndarray) -> np.ndarray:
        """The places of a test set's images with the shortlist's order in front.

        Args:
            places: N x Q places (0-based) of the test set's N images in each query's ranking
                (`aml.evaluation.database.TestDatabase.positions`), whose first M are the
                shortlist's; indices of N and above (distractors) have no row.

        Returns:
            The N x Q places: an image of the shortlist at its rank there, the others where
            they were.
        """
        out = np.array(places, copy=True)
        ranks = np.broadcast_to(np.arange(len(self.indices))[:, None], self.indices.shape)
        queries = np.broadcast_to(np.arange(self.indices.shape[1]), self.indices.shape)
        mine = (self.indices >= 0) & (self.indices < len(out))
        out[self.indices[mine], queries[mine]] = ranks[mine]
        return out

    def ahead_of(self, scores: np.ndarray, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """A search's top k with the shortlist in front.

        Args:
            scores: Q x k scores of the search, best first.
            indices: Q x k database indices (-1: none).

        Returns:
            Q x k scores and indices: the shortlist's results with their SuperGlobal scores,
            then the search's results that are not among them, with their scores (-1 and
            -inf where there are fewer than k).
        """
        k = indices.shape[1]
        out_scores = np.full(scores.shape, -np.inf, dtype=np.float64)
        out_indices = np.full(indices.shape, -1, dtype=indices.dtype)
        for q, (row_scores, row) in enumerate(zip(scores, indices, strict=True)):
            head = self.indices[:, q] >= 0
            rest = (row >= 0) & ~np.isin(row, self.indices[head, q])
            found = np.concatenate([self.indices[head, q], row[rest]])[:k]
            out_indices[q, : len(found)] = found
            out_scores[q, : len(found)] = np.concatenate([self.scores[head, q], row_scores[rest]])[:k]
        return out_scores, out_indices


def superglobal_shortlist(
    indices: np.ndarray, top: np.ndarray, queries: np.ndarray, settings: SuperGlobal
) -> Shortlist:
    """SuperGlobal's re-ranking of each query's first results, given with their descriptors.

    Args:
        indices: M x Q database indices of each query's first results, best first (-1: no
            result, at the end), as a database's ``nearest`` gives them.
        top: D x M x Q their L2-normalised descriptors (those a search used: whitened,
            augmented, distractors included).
        queries: D x Q query descriptors (those of that search).
        settings: k and beta (``settings.m`` is the caller's: M is the rows given).

    Returns:
        The re-ranked `Shortlist`.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.superglobal import SuperGlobal, superglobal_shortlist
        >>> top = np.array([[[0.0], [0.8], [1.0]], [[1.0], [0.6], [0.0]]])  # D x M x Q: C, B, A
        >>> shortlist = superglobal_shortlist(np.array([[2], [1], [0]]), top, np.array([[0.7], [0.714]]),
        ...                                   SuperGlobal(m=3, k=1, beta=1.0))
        >>> shortlist.indices.ravel(), shortlist.scores.ravel().round(4)
        (array([1, 0, 2]), array([0.8906, 0.8736, 0.6868]))
    """
    order = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape).copy()
    scores = np.full(indices.shape, -np.inf)
    for q in range(indices.shape[1]):
        count = int((indices[:, q] >= 0).sum())
        if count == 0:
            continue
        found = superglobal_scores(
            top[:, :count, q].T.astype(np.float64), queries[:, q].astype(np.float64), settings.k, settings.beta
        )
        order[:count, q] = np.argsort(-found, kind="stable")
        scores[:count, q] = found[order[:count, q]]
    return Shortlist(np.take_along_axis(indices, order, axis=0), scores)


def superglobal_rerank(
    database: np.ndarray, queries: np.ndarray, ranks: np.ndarray, settings: SuperGlobal = SuperGlobal()
) -> np.ndarray:
    """Re-rank each query's first ``settings.m`` results the SuperGlobal way.

    Args:
        database: D x N L2-normalised database descriptors.
        queries: D x Q L2-normalised query descriptors.
        ranks: N x Q database indices per query, best first (any number of rows: a top-k of
            ``database``; with distractors, ``database`` holds them too, as the indices do).
        settings: m, k and beta.

    Returns:
        The re-ranked N x Q rankings (a new array; rows below m unchanged).

    Raises:
        DataError: when the shapes disagree, ``ranks`` holds other than indices of
            ``database`` (`aml.evaluation.ranking.check_ranking`), or a descriptor is not finite.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.superglobal import SuperGlobal, superglobal_rerank
        >>> X = np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 1.0]])   # D x N
        >>> q = np.array([[0.7], [0.714]])
        >>> superglobal_rerank(X, q, np.array([[2], [1], [0]]), SuperGlobal(m=3, k=1, beta=1.0)).ravel()
        array([1, 0, 2])
    """
    database, queries = np.asarray(database), np.asarray(queries)
    try:
        check_columns(database, queries)
        check_ranking(ranks, queries.shape[1], database.shape[1], "SuperGlobal")
    except ConfigError as err:  # this function's error for shapes that disagree, as it always was
        raise DataError(str(err)) from None
    for name, values in (("database", database), ("query", queries)):
        if not np.isfinite(values).all():
            raise DataError(f"SuperGlobal: the {name} descriptors hold NaN or infinite values")
    out = np.array(ranks, copy=True)
    head = out[: settings.m]
    out[: settings.m] = superglobal_shortlist(head, database[:, head], queries, settings).indices
    return out
