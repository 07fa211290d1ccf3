"""faiss behind the store's searches: exact search (``IndexFlatIP``, or matrix products with
torch without faiss) and the approximate IVF-PQ index a store may hold in ``index.faiss``."""

import logging
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch

from aml.evaluation.ranking import SCORE_VALUES, even_parts, padded_products, top_in_order
from aml.utils.atomic import atomic_write

log = logging.getLogger(__name__)

PQ_CODES = 256  # centroids of each 8-bit sub-quantiser: the fewest training vectors faiss accepts
ADVISED_PER_CENTROID = 39  # faiss's default min_points_per_centroid: fewer training vectors, and it warns


def faiss_or_none() -> Any:
    """The faiss module when installed (``faiss-cpu`` or ``faiss-gpu``), else None."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _rows(vecs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vecs.T, dtype=np.float32)


class ExactIndex:
    """Exact search over fixed database descriptors by dot product, prepared once: faiss
    ``IndexFlatIP`` over their rows when faiss is installed, else matrix products with torch
    over the descriptors as they are (a store's D x N array is a view of rows: no copy), a few
    queries at a time (no more than ``SCORE_VALUES`` scores at once).

    Args:
        vecs: D x N database descriptors.
    """

    def __init__(self, vecs: np.ndarray):
        faiss = faiss_or_none()
        self.flat: Any = None
        self.rows: Optional[torch.Tensor] = None
        if faiss is not None:
            self.flat = faiss.IndexFlatIP(vecs.shape[0])
            self.flat.add(_rows(vecs))
        else:  # N x D, in any layout (a store's: its own memory)
            self.rows = torch.as_tensor(np.asarray(vecs, dtype=np.float32)).t()

    def search(self, query_rows: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` best database columns, as faiss's ``Index.search`` answers.

        Args:
            query_rows: Q x D float32 query descriptors, one per row.
            k: results per query (at most N).

        Returns:
            The scores and the indices, each Q x k, best first, equal scores in database order
            and the images tied at the k-th score the first ones of the store (as the test's
            ranking puts them).
        """
        if self.flat is not None:
            return self._faiss_search(query_rows, k)
        assert self.rows is not None
        chunk = max(1, SCORE_VALUES // max(self.rows.shape[0], 1))
        found, top = [], []
        for part in even_parts(len(query_rows), chunk) if len(query_rows) else []:  # as the evaluation scores
            scores = padded_products(torch.from_numpy(query_rows[part]).t(), self.rows)
            indices = top_in_order(scores, k)
            found.append(torch.gather(scores, 1, indices).numpy())
            top.append(indices.numpy())
        if not found:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(found), np.concatenate(top)

    def _faiss_search(self, query_rows: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """faiss's search, widened until no image beyond those returned ties with the k-th (faiss
        picks any images of the k-th score): k + 1 results first, then twice as many for the
        queries still tied, until none is or the store is exhausted."""
        total = self.flat.ntotal
        scores, indices = np.empty((len(query_rows), k), np.float32), np.empty((len(query_rows), k), np.int64)
        rows, wider = np.arange(len(query_rows)), min(total, k + 1)
        while len(rows):
            found, at = self.flat.search(query_rows[rows], wider)
            settled = (found[:, -1] < found[:, k - 1]) | (wider == total)
            ordered_scores, ordered = in_tie_order(found[settled], at[settled])
            scores[rows[settled]], indices[rows[settled]] = ordered_scores[:, :k], ordered[:, :k]
            rows, wider = rows[~settled], min(total, 2 * wider)
        return scores, indices


def in_tie_order(scores: np.ndarray, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A faiss search's Q x k results, each row best first and equal scores in the store's
    order (faiss leaves them in any order), positions it did not fill (-1) last.

    Examples:
        >>> import numpy as np
        >>> from aml.search.faiss_index import in_tie_order
        >>> in_tie_order(np.array([[0.5, 0.9, 0.9, -1.0]]), np.array([[3, 7, 2, -1]]))[1].tolist()
        [[2, 7, 3, -1]]
    """
    order = np.lexsort((indices, -scores, indices < 0), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def read_index(data: bytes) -> Optional[Any]:
    """The IVF-PQ index of an ``index.faiss`` file's bytes, or None without faiss to read it.

    Args:
        data: the file's bytes (read once by the caller, who checks their sha256).

    Returns:
        The faiss index, or None.

    Raises:
        RuntimeError: faiss's, when the file is damaged (the caller names the store).
    """
    faiss = faiss_or_none()
    if faiss is None:
        return None
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


#: the held-out rows whose exact neighbours are found at a time (a block of scores: 50 x N float32)
PROBE_BLOCK = 50


def _exact_top(probe: np.ndarray, data: np.ndarray, held: np.ndarray, k: int) -> np.ndarray:
    """Each probe row's ``k`` best rows of ``data`` but the ``held`` ones, in exact search's
    order (equal scores in row order), without sorting whole rows."""
    scores = probe @ data.T
    scores[:, held] = -np.inf  # the held-out rows are not in the index
    return top_in_order(torch.from_numpy(scores), k).numpy()


def train_ivfpq(
    vecs: np.ndarray, nlist: int, m: int, nprobe: int = 16, k: int = 10, sample: int = 200, seed: int = 0
) -> Tuple[Any, float]:
    """An IVF-PQ index over the columns of ``vecs``, and its recall@k against exact search.

    The recall is of held-out queries, as real queries are: ``sample`` columns are searched
    before they are added to the index, against the exact neighbours among the other columns
    (a column searched in an index that holds it finds itself, and its own list is always
    probed: that recall is higher than any query's).

    Args:
        vecs: D x N database descriptors (N >= 256 and >= ``nlist``; D a multiple of ``m``).
        nlist: the inverted lists.
        m: the sub-quantisers of 8 bits.
        nprobe: the lists searched per query (at most ``nlist``).
        k: the k of recall@k.
        sample: the database descriptors drawn as queries of the recall (at most half).
        seed: the seed of their draw.

    Returns:
        The trained index (every column added) and its recall@k in [0, 1].
    """
    faiss = faiss_or_none()
    dim, n = vecs.shape
    data = _rows(vecs)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    advised = ADVISED_PER_CENTROID * max(nlist, PQ_CODES)
    if n < advised:  # faiss warns of it on stderr, a line per sub-quantiser: said once here
        log.warning(
            ">> %d images train the IVF-PQ codebooks (faiss advises %d or more for %d lists and 8-bit codes): "
            "the recall below says how well they do",
            n,
            advised,
            nlist,
        )
    for parameters in (index.cp, index.pq.cp):
        parameters.min_points_per_centroid = 1
    index.train(data)
    held = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n // 2), replace=False))
    for start, stop in zip(np.r_[0, held + 1], np.r_[held, n], strict=True):  # the rows between, as views
        if stop > start:
            index.add_with_ids(data[start:stop], np.arange(start, stop, dtype=np.int64))
    index.nprobe = min(nprobe, nlist)
    probe = data[held]
    k = min(k, n - held.size)
    exact = np.concatenate(
        [_exact_top(probe[start : start + PROBE_BLOCK], data, held, k) for start in range(0, len(probe), PROBE_BLOCK)]
    )
    _, approximate = index.search(probe, k)
    recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approximate, exact, strict=True)]))
    index.reset()  # trained as it is; every column added in order, so that equal scores keep it
    index.add(data)
    return index, recall


def write_index(index: Any, path: Path) -> None:
    """Save a faiss index to ``path``, atomically.

    Args:
        index: the index.
        path: the file.
    """
    data = faiss_or_none().serialize_index(
        index
    )  # written by Python: faiss's own writer calls a full disk a RuntimeError
    atomic_write(path, lambda out: out.write(memoryview(data)))  # an index on disk is whole, or the old one
