"""Nearest-neighbour search by dot product of L2-normalised descriptors."""

from typing import Sequence

import numpy as np
import torch


def rank_database(database: np.ndarray, queries: np.ndarray, device: str = "cpu",
                  excluded: Sequence[int] = ()) -> np.ndarray:
    """N_db x N_q ranks (best first) from D x N_db and D x N_q descriptor matrices.

    The score matrix is one matrix product; each query's scores are sorted as one contiguous
    row on ``device`` (a GPU sorts a 1M-image database in milliseconds). The result is a
    transposed view of the Q x N_db sort (no copy); column q is contiguous. ``excluded``
    database images (unreadable ones that were skipped) rank last, for every query.
    """
    db = torch.as_tensor(np.ascontiguousarray(database), dtype=torch.float32, device=device)
    q = torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.float32, device=device)
    scores = q.t() @ db
    if len(excluded):
        scores[:, torch.as_tensor(list(excluded), dtype=torch.long, device=device)] = -torch.inf
    return torch.argsort(scores, dim=1, descending=True, stable=True).cpu().numpy().T
