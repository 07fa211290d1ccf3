"""SuperGlobal's re-ranking of a query's top results with global descriptors only.

Shao et al., "Global Features are All You Need for Image Retrieval and Reranking", ICCV 2023,
re-rank the top ``m`` database images of a query in two steps, both inside that short list:

1. *Descriptor augmentation* of each of the ``m`` images by its ``k`` nearest neighbours
   among them: ``x'_i = (x_i + beta * sum_j s_ij x_j) / (1 + beta * sum_j s_ij)``, s_ij the
   cosine similarity of neighbour j to image i. The query's similarity to the augmented
   descriptors, ``s1_i = q . x'_i``, orders the list a first time.
2. *Query expansion by the maximum*: the element-wise maximum of the augmented descriptors of
   the ``k + 1`` images first by s1 is a second query, ``s2_i = max_j(x'_j) . x'_i``; the
   final score is ``(s1_i + s2_i) / 2``.

The images below the top ``m`` keep their places. Descriptors are D x N columns of
L2-normalised vectors and rankings N x Q columns of database indices (cirtorch's
conventions). The paper's values (its code's defaults, used for rOxford and rParis):
``m = 400``, ``k = 9``, ``beta = 0.15``. Unlike the paper's code, a neighbour's similarity is
clipped at 0 before it weighs (as aml's αQE and DBA do), so that a neighbour pointing away
never subtracts; among an image's nearest neighbours this never happens in practice.
"""

from dataclasses import dataclass

import numpy as np

#: the paper's hyper-parameters (its code's defaults; Shao et al., ICCV 2023, section 4)
PAPER_M, PAPER_K, PAPER_BETA = 400, 9, 0.15


@dataclass(frozen=True)
class SuperGlobal:
    """SuperGlobal's re-ranking settings.

    Attributes:
        m: the top results of a query that are re-ranked (0: none).
        k: the neighbours that augment a descriptor, and the results (k + 1) whose maximum
            expands the query.
        beta: the weight of the neighbours against the descriptor itself.
    """

    m: int = PAPER_M
    k: int = PAPER_K
    beta: float = PAPER_BETA

    def __post_init__(self) -> None:
        for name in ("m", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SuperGlobal.{name} must be an integer >= 0, got {value!r}")
        if (
            isinstance(self.beta, bool)
            or not isinstance(self.beta, (int, float))
            or not np.isfinite(self.beta)
            or self.beta < 0
        ):
            raise ValueError(f"SuperGlobal.beta must be a finite number >= 0, got {self.beta!r}")


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


def superglobal_rerank(
    database: np.ndarray, queries: np.ndarray, ranks: np.ndarray, settings: SuperGlobal = SuperGlobal()
) -> np.ndarray:
    """Re-rank each query's top ``settings.m`` results the SuperGlobal way.

    Args:
        database: D x N L2-normalised database descriptors.
        queries: D x Q L2-normalised query descriptors.
        ranks: N x Q database indices per query, best first (any number of rows, e.g. a
            top-k from distractor blocks).
        settings: m, k and beta.

    Returns:
        The re-ranked N x Q rankings (a new array; rows below m unchanged).

    Raises:
        ValueError: when the shapes disagree or a descriptor is not finite.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.superglobal import SuperGlobal, superglobal_rerank
        >>> X = np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 1.0]])   # D x N
        >>> q = np.array([[0.7], [0.714]])
        >>> superglobal_rerank(X, q, np.array([[2], [1], [0]]), SuperGlobal(m=3, k=1, beta=1.0)).ravel()
        array([1, 0, 2])
    """
    if database.shape[0] != queries.shape[0] or ranks.shape[1] != queries.shape[1]:
        raise ValueError(
            f"SuperGlobal: database {database.shape}, queries {queries.shape} and ranks {ranks.shape} "
            "disagree (D x N, D x Q, N x Q)"
        )
    for name, values in (("database", database), ("query", queries)):
        if not np.isfinite(values).all():
            raise ValueError(f"SuperGlobal: the {name} descriptors hold NaN or infinite values")
    out = np.array(ranks, copy=True)
    m = min(settings.m, len(ranks))
    if m < 2:
        return out
    for j in range(queries.shape[1]):
        top = out[:m, j].copy()
        scores = superglobal_scores(
            database[:, top].T.astype(np.float64), queries[:, j].astype(np.float64), settings.k, settings.beta
        )
        out[:m, j] = top[np.argsort(-scores, kind="stable")]
    return out
