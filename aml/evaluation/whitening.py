"""Post-processing whitening of descriptors (columns of a D x N matrix).

Learned whitening "Lw" (Radenovic et al.): with m the mean of the query descriptors and
S the covariance of query - positive differences, P1 = inverse Cholesky factor of S; then
the scatter of P1 (X - m) over all descriptors is diagonalised (eigenvalues descending) and
P = E^T P1. Applying keeps the first d rows of P (X - m) and L2-normalises each column.
"""

import logging
from typing import Any, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from aml.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class WhiteningError(DataError):
    """A whitening (m, P) that is not one: not numbers, not finite, or not of the descriptors' dimension.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import WhiteningError, check_whitening
        >>> try:
        ...     check_whitening(np.zeros(8), np.eye(8), 512, "model.pth: meta['Lw']")
        ... except WhiteningError as err:
        ...     print(str(err)[:70])
        model.pth: meta['Lw']: m of shape (8,) and P of shape (8, 8) do not wh
    """


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _as_array(value: Any) -> Optional[np.ndarray]:
    """A whitening part as a numpy array (bfloat16 as float32, which numpy lacks); None for what
    holds no dense numbers (a sparse tensor, a string, a dict)."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            return None
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None


def check_whitening(m: Any, P: Any, dim: int, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """A whitening as read from a file, checked before it touches a descriptor.

    Args:
        m: the mean, D values (D or D x 1).
        P: the projection, d x D with 1 <= d <= D.
        dim: D, the dimension of the descriptors it whitens.
        source: what the error names (a file, a checkpoint's ``meta['Lw']`` entry).

    Returns:
        m as a D x 1 array and P, in their own float dtype.

    Raises:
        WhiteningError: naming ``source``, when either is not an array of real numbers (numpy
            or torch), their shapes do not whiten D-d descriptors, a value is NaN or infinite,
            or a row of P is all zero.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.whitening import check_whitening
        >>> m, P = check_whitening(np.zeros(3), np.eye(3), 3, "lw.pth")
        >>> m.shape, P.shape
        ((3, 1), (3, 3))
        >>> try:
        ...     check_whitening(np.zeros(3), np.full((3, 3), np.nan), 3, "lw.pth")
        ... except ValueError as err:
        ...     print(str(err).split(":")[0])
        lw.pth holds 9 NaN or infinite values (in float32)
    """
    arrays = [_as_array(value) for value in (m, P)]
    numbers = (np.floating, np.integer)
    if any(a is None or not any(np.issubdtype(a.dtype, kind) for kind in numbers) for a in arrays):
        kinds = ", ".join(type(value).__name__ for value in (m, P))
        raise WhiteningError(
            f"{source} is not a whitening: m and P are {kinds}, not arrays of numbers; learn the "
            "whitening again, or give another"
        )
    m, P = arrays
    if m.size != dim or P.ndim != 2 or P.shape[1] != dim or not 1 <= P.shape[0] <= dim:
        raise WhiteningError(
            f"{source}: m of shape {m.shape} and P of shape {P.shape} do not whiten {dim}-d "
            f"descriptors (m: {dim} values, P: {dim} columns); it was learned for another network"
        )
    # float32 is what whitens: a float64 value beyond its range would be infinite there
    bad = sum(int((~np.isfinite(a) | (np.abs(np.nan_to_num(a)) > _FLOAT32_MAX)).sum()) for a in (m, P))
    if bad:
        raise WhiteningError(
            f"{source} holds {bad} NaN or infinite values (in float32): it is damaged; learn the whitening again, or "
            "give another"
        )
    zero = int((~P.any(axis=1)).sum())
    if zero:
        raise WhiteningError(
            f"{source}: {zero} of P's {P.shape[0]} rows are all zero, so every whitened descriptor would be zero "
            "there (a learned whitening has none): it is damaged; learn the whitening again, or give another"
        )
    return m.reshape(dim, 1), P


def whitened(X: np.ndarray, whitening: Tuple[np.ndarray, np.ndarray], what: str) -> np.ndarray:
    """`whitenapply` of a checked whitening, refusing a result that is not finite.

    Args:
        X: D x N descriptors.
        whitening: (m, P), as `check_whitening` returns them.
        what: what the descriptors are, for the error (e.g. ``"roxford5k queries"``).

    Returns:
        The whitened descriptors.

    Raises:
        WhiteningError: naming ``what`` (e.g. ``"roxford5k queries"``) and how many columns went wrong.
    """
    Y = whitenapply(X, *whitening)
    bad = _non_finite_columns(Y)
    if bad:
        _refuse_non_finite(bad, Y.shape[1], what)
    return Y


def _non_finite_columns(Y: np.ndarray) -> int:
    """How many columns of ``Y`` hold a NaN or an infinite value."""
    return int((~np.isfinite(Y)).any(axis=0).sum())


#: the columns `whitened_float32` whitens at a time (float64 temporaries of a few MB per 1,000 dimensions)
WHITENING_BLOCK = 16384


def whitened_float32(X: np.ndarray, whitening: Tuple[np.ndarray, np.ndarray], what: str) -> np.ndarray:
    """`whitened` into one float32 array, a block of columns at a time: what a store of a
    million descriptors takes (`whitenapply` of all of them at once holds float64 copies of
    four times the store's size; each column's values are the same).

    Args:
        X: D x N descriptors.
        whitening: (m, P), as `check_whitening` returns them.
        what: what the descriptors are, for the error.

    Returns:
        The d x N whitened descriptors, float32 (a view of N x d rows, which faiss takes as
        they are).

    Raises:
        WhiteningError: naming ``what`` and how many columns went wrong.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.whitening import whitened_float32
        >>> Y = whitened_float32(np.array([[3.0, 1.0], [4.0, 1.0]]), (np.zeros((2, 1)), np.eye(2)), "example")
        >>> Y.dtype, Y.shape, [round(float(value), 4) for value in Y[:, 0]]
        (dtype('float32'), (2, 2), [0.6, 0.8])
    """
    m, P = whitening
    rows = np.empty((X.shape[1], P.shape[0]), dtype=np.float32)
    bad = 0
    for start in range(0, X.shape[1], WHITENING_BLOCK):
        with np.errstate(invalid="ignore", over="ignore"):  # counted and refused below, not numpy's warning
            Y = whitenapply(X[:, start : start + WHITENING_BLOCK], m, P)
        bad += _non_finite_columns(Y)
        rows[start : start + Y.shape[1]] = Y.T
    if bad:
        _refuse_non_finite(bad, X.shape[1], what)
    return rows.T


def _refuse_non_finite(bad: int, count: int, what: str) -> NoReturn:
    """Raise the WhiteningError of ``bad`` of ``count`` ``what`` descriptors not finite."""
    raise WhiteningError(
        f"whitening made {bad} of the {count} {what} descriptors NaN or infinite: the "
        "descriptors or the whitening hold values out of range"
    )


def whitened_rows(rows: torch.Tensor, whitening: Tuple[Any, Any], what: str) -> torch.Tensor:
    """`whitened` for n x D float32 rows, computed where they lie.

    On a CUDA device the rows stay there and are whitened in float64 (`whitenapply_rows`):
    a block of the +1M distractors is not copied to the host and back, nor multiplied by the
    D x D projection on the host's cores. Elsewhere `whitenapply` computes it on the host (on
    the CPU that is the same memory; MPS has no float64).

    Args:
        rows: n x D descriptors, float32.
        whitening: (m, P), as `check_whitening` returns them, or as `whitening_on` puts them
            on the rows' device (float64 tensors on CUDA).
        what: what the descriptors are, for the error (e.g. ``"distractor"``).

    Returns:
        The n x d whitened rows, float32, on the rows' device.

    Raises:
        WhiteningError: naming ``what`` when a result is NaN or infinite.
    """
    if rows.device.type == "cuda":
        Y = whitenapply_rows(rows, *whitening)
    else:
        Y = torch.from_numpy(np.ascontiguousarray(whitenapply(rows.cpu().numpy().T, *whitening).T))
    bad = (~torch.isfinite(Y)).any(dim=1)
    if bool(bad.any()):
        _refuse_non_finite(int(bad.sum()), Y.shape[0], what)
    return Y.to(device=rows.device, dtype=torch.float32)


def whitening_on(whitening: Tuple[np.ndarray, np.ndarray], device: Union[str, torch.device]) -> Tuple[Any, Any]:
    """The whitening as `whitened_rows` takes it for rows on ``device``: float64 tensors there
    on CUDA (copied once, not for every block of distractors: a 2048-d projection is 32 MiB),
    the arrays as they are elsewhere.

    Args:
        whitening: (m, P), as `check_whitening` returns them.
        device: where the rows lie.

    Returns:
        (m, P) for that device.
    """
    if torch.device(device).type != "cuda":
        return whitening
    m, P = (torch.as_tensor(np.asarray(part), dtype=torch.float64, device=device) for part in whitening)
    return m, P


def whitenapply_rows(rows: torch.Tensor, m: Any, P: Any) -> torch.Tensor:
    """`whitenapply` of n x D rows in float64 on their device: (rows - m^T) P^T, each row
    divided by (its L2 norm + 1e-6); n x d float64. ``m`` and ``P``: arrays, or tensors
    (`whitening_on`), used where they lie when they are float64 on the rows' device."""
    mean = torch.as_tensor(m, dtype=torch.float64, device=rows.device).reshape(1, -1)
    projection = torch.as_tensor(P, dtype=torch.float64, device=rows.device)
    Y = (rows.to(torch.float64) - mean) @ projection.T
    return Y / (torch.linalg.vector_norm(Y, dim=1, keepdim=True) + 1e-6)


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
    qidxs, pidxs = list(qidxs), list(pidxs)
    if (
        X.ndim != 2
        or len(qidxs) != len(pidxs)
        or not qidxs
        or max(qidxs + pidxs) >= X.shape[1]
        or min(qidxs + pidxs) < 0
    ):
        raise ConfigError(
            f"whitenlearn takes D x N descriptors (one column per image) and pairs of column indices: got {X.shape} "
            f"with {len(qidxs)} queries and {len(pidxs)} positives up to index {max(qidxs + pidxs, default=0)}"
        )
    queries, positives = X[:, qidxs], X[:, pidxs]
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
    if X.ndim != 2:
        raise ConfigError(f"pcawhitenlearn takes D x N descriptors, one column per image: got {X.shape}")
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
    X, m, P = np.asarray(X), np.asarray(m), np.asarray(P)
    if X.ndim != 2 or P.ndim != 2 or P.shape[1] != X.shape[0] or m.size != X.shape[0]:
        raise ConfigError(
            f"whitenapply takes D x N descriptors, a mean of D values and a d x D projection: got X {X.shape}, m "
            f"{m.shape}, P {P.shape}; pass X.T if the images are rows"
        )
    P = P[: dimensions or None, :]
    Y = P @ (X - m.reshape(-1, 1))  # a mean of shape (D,) broadcast along the images otherwise
    return Y / (np.linalg.norm(Y, ord=2, axis=0, keepdims=True) + 1e-6)
