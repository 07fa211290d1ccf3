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
    """Learn (m, P) from descriptors ``X`` (D x N) and matching pairs (query, positive)."""
    X = np.asarray(X, dtype=np.float64)
    queries, positives = X[:, list(qidxs)], X[:, list(pidxs)]
    m = queries.mean(axis=1, keepdims=True)
    diff = queries - positives
    P1 = np.linalg.inv(cholesky(diff @ diff.T / diff.shape[1]))
    Y = P1 @ (X - m)
    _, vectors = _sorted_eigh(Y @ Y.T)
    return m, vectors.T @ P1


def pcawhitenlearn(X: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Unsupervised PCA whitening: P = diag(eigval)^(-1/2) E^T of the covariance of X."""
    X = np.asarray(X, dtype=np.float64)
    m = X.mean(axis=1, keepdims=True)
    centred = X - m
    values, vectors = _sorted_eigh(centred @ centred.T / X.shape[1])
    return m, np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def whitenapply(X: np.ndarray, m: np.ndarray, P: np.ndarray, dimensions: Optional[int] = None) -> np.ndarray:
    """P[:d] (X - m), each column divided by (its L2 norm + 1e-6)."""
    P = np.asarray(P)[: dimensions or None, :]
    Y = P @ (np.asarray(X) - np.asarray(m))
    return Y / (np.linalg.norm(Y, ord=2, axis=0, keepdims=True) + 1e-6)
