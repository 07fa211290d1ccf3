"""Post-processing whitening of descriptors (columns of a D x N matrix).

Learned whitening "Lw" (Radenovic et al.): with m the mean of the query descriptors and
S the covariance of query - positive differences, P1 = inverse Cholesky factor of S; then
the scatter of P1 (X - m) over all descriptors is diagonalised (eigenvalues descending) and
P = E^T P1. Applying keeps the first d rows of P (X - m) and L2-normalises each column.
"""

import logging
from typing import Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)


def cholesky(matrix: np.ndarray, max_tries: int = 20) -> np.ndarray:
    """Lower Cholesky factor; adds a ridge 1e-10, 1e-9, ... until the matrix is positive definite."""
    ridge = 0.0
    for _ in range(max_tries):
        try:
            return np.linalg.cholesky(matrix + ridge * np.eye(matrix.shape[0]))
        except np.linalg.LinAlgError:
            ridge = 1e-10 if ridge == 0 else ridge * 10
            log.info(">>>> whitening: matrix is not positive definite, adding %.0e on the diagonal", ridge)
    raise np.linalg.LinAlgError(f"matrix still not positive definite with a ridge of {ridge:.0e}")


def _sorted_eigh(matrix: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def whitenlearn(X: np.ndarray, qidxs: Sequence[int], pidxs: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Learn the whitening (m, P) from descriptors and matching pairs (query, positive).

    The learned whitening "Lw" of the module's header: m is the mean of the queries, P1 the
    inverse Cholesky factor of the covariance of query - positive differences, and P = E^T P1
    with E the eigenvectors (eigenvalues descending) of the scatter of P1 (X - m).

    Args:
        X: D x N descriptors.
        qidxs: the columns of the pairs' queries.
        pidxs: the columns of their positives, in the same order.

    Returns:
        The D x 1 mean m and the D x D projection P, as float64.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import whitenlearn
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(8, 40))
        >>> X[:, 20:] = X[:, :20] + 0.1 * rng.normal(size=(8, 20))  # column 20 + i matches column i
        >>> m, P = whitenlearn(X, qidxs=range(20), pidxs=range(20, 40))
        >>> m.shape, P.shape
        ((8, 1), (8, 8))
        >>> diff = P @ (X[:, :20] - X[:, 20:])  # the whitened differences have identity covariance
        >>> np.allclose(diff @ diff.T / 20, np.eye(8))
        True
    """
    X = np.asarray(X, dtype=np.float64)
    queries, positives = X[:, list(qidxs)], X[:, list(pidxs)]
    m = queries.mean(axis=1, keepdims=True)
    diff = queries - positives
    P1 = np.linalg.inv(cholesky(diff @ diff.T / diff.shape[1]))
    Y = P1 @ (X - m)
    _, vectors = _sorted_eigh(Y @ Y.T)
    return m, vectors.T @ P1


def pcawhitenlearn(X: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Unsupervised PCA whitening: P = diag(eigval)^(-1/2) E^T of the covariance of X.

    Args:
        X: D x N descriptors.

    Returns:
        The D x 1 mean m and the D x D projection P, as float64 (eigenvalues descending).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import pcawhitenlearn
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(4, 100)) * np.array([[4.0], [2.0], [1.0], [0.5]])
        >>> m, P = pcawhitenlearn(X)
        >>> Y = P @ (X - m)
        >>> np.allclose(Y @ Y.T / 100, np.eye(4))
        True
    """
    X = np.asarray(X, dtype=np.float64)
    m = X.mean(axis=1, keepdims=True)
    centred = X - m
    values, vectors = _sorted_eigh(centred @ centred.T / X.shape[1])
    return m, np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def whitenapply(X: np.ndarray, m: np.ndarray, P: np.ndarray, dimensions: Optional[int] = None) -> np.ndarray:
    """Whiten descriptors: P[:d] (X - m), each column divided by (its L2 norm + 1e-6).

    Args:
        X: D x N descriptors.
        m: the D x 1 mean.
        P: the D x D projection.
        dimensions: d, the leading rows of P kept; None: all.

    Returns:
        The d x N whitened, L2-normalised descriptors.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import whitenapply
        >>> X = np.array([[3.0, 1.0], [4.0, 1.0]])
        >>> whitenapply(X, np.zeros((2, 1)), np.eye(2)).round(4)
        array([[0.6   , 0.7071],
               [0.8   , 0.7071]])
        >>> whitenapply(X, np.zeros((2, 1)), np.eye(2), dimensions=1).round(4)
        array([[1., 1.]])
    """
    P = np.asarray(P)[: dimensions or None, :]
    Y = P @ (np.asarray(X) - np.asarray(m))
    return Y / (np.linalg.norm(Y, ord=2, axis=0, keepdims=True) + 1e-6)
