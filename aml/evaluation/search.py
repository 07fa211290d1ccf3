"""Nearest-neighbour search by dot product of L2-normalised descriptors: the full ranking of
a test set's database, and the places of its images when a large distractor set is added
(searched block by block, with bounded memory)."""

from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

Transform = Callable[[np.ndarray], np.ndarray]  # D x n descriptors -> D x n (e.g. whitening)


def _scores(database: np.ndarray, queries: np.ndarray, device: str, excluded: Sequence[int]) -> torch.Tensor:
    """Q x N dot products; ``excluded`` columns at -inf."""
    db = torch.as_tensor(np.ascontiguousarray(database), dtype=torch.float32, device=device)
    q = torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.float32, device=device)
    scores = q.t() @ db
    if len(excluded):
        scores[:, torch.as_tensor(list(excluded), dtype=torch.long, device=device)] = -torch.inf
    return scores


def rank_database(database: np.ndarray, queries: np.ndarray, device: str = "cpu",
                  excluded: Sequence[int] = ()) -> np.ndarray:
    """N_db x N_q ranks (best first) from D x N_db and D x N_q descriptor matrices.

    The score matrix is one matrix product; each query's scores are sorted as one contiguous
    row on ``device`` (a GPU sorts a 1M-image database in milliseconds). The result is a
    transposed view of the Q x N_db sort (no copy); column q is contiguous. ``excluded``
    database images (unreadable ones that were skipped) rank last, for every query.
    Equal scores keep the database order (a stable sort).
    """
    scores = _scores(database, queries, device, excluded)
    return torch.argsort(scores, dim=1, descending=True, stable=True).cpu().numpy().T


def positions_with_distractors(database: np.ndarray, queries: np.ndarray,
                               distractors: Iterable[Tuple[int, np.ndarray]], device: str = "cpu",
                               excluded: Sequence[int] = (), excluded_distractors: Sequence[int] = (),
                               transform: Optional[Transform] = None) -> np.ndarray:
    """N_db x N_q places (0-based) of the test database's images in the ranking of the test
    database followed by the distractors, without forming that ranking.

    ``distractors`` yields (first index, n_k x D block) in order (a descriptor store's
    shards); each block's scores are sorted once and every database image's score is
    looked up in them, so memory holds one block and its Q x n_k scores, never the
    Q x (N + M) matrix. The places equal those of :func:`rank_database` on the
    concatenation: equal scores keep the order, database images before distractors.
    ``excluded`` / ``excluded_distractors`` (unreadable images) score -inf. ``transform``
    applies to every block (the queries and database come transformed already).
    """
    scores = _scores(database, queries, device, excluded)
    n_q, n_db = scores.shape
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    places = torch.empty_like(order)
    places.scatter_(1, order, torch.arange(n_db, device=device).expand(n_q, n_db).contiguous())
    skipped = np.asarray(sorted(excluded_distractors), dtype=np.int64)
    for start, block in distractors:
        block = np.asarray(block, dtype=np.float32).T  # D x n_k
        if transform is not None:
            block = transform(block)
        gone = skipped[(skipped >= start) & (skipped < start + block.shape[1])] - start
        block_scores = _scores(block, queries, device, gone.tolist())
        ascending = torch.sort(block_scores, dim=1).values
        # distractors strictly above each database image's score
        places += block.shape[1] - torch.searchsorted(ascending, scores, right=True)
    return places.cpu().numpy().T
