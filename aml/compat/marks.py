"""The marks of a compatibility matrix, as pure functions of its mAP: rows are the networks that
encode the queries, columns those that encode the database, NaN where the two networks'
dimensions differ (no search)."""

import numpy as np


def beats_teacher(maps: np.ndarray, teacher: int = 0) -> np.ndarray:
    """The cells whose mAP exceeds the teacher's own symmetric mAP.

    Every cell but the teacher's own involves a student, as the query network, the database
    network or both: a marked diagonal cell is a student better than its teacher on its own
    (the paper's second finding), a marked off-diagonal cell a pair of networks that searches
    better together than the teacher alone.

    Args:
        maps: the N x N mAP, row i's queries searched in column j's database; NaN: no search.
        teacher: the teacher's row (and column).

    Returns:
        N x N booleans, False on the teacher's own cell and where there was no search.

    Examples:
        >>> import numpy as np
        >>> from aml.compat import beats_teacher
        >>> beats_teacher(np.array([[0.6, 0.7], [0.5, np.nan]]))
        array([[False,  True],
               [False, False]])
    """
    maps = np.asarray(maps, dtype=float)
    marked = maps > maps[teacher, teacher]  # NaN compares False
    marked[teacher, teacher] = False
    return marked


def bct_compatible(maps: np.ndarray) -> np.ndarray:
    """The cells where BCT's criterion of compatibility holds.

    BCT (Shen et al., CVPR 2020) calls a new network compatible with an old one when the new
    network's queries, searched in the database the old one encoded, find more than the old
    network's own queries: M(new, old) > M(old, old). Here it is checked for every ordered pair
    of two networks, the row's as the new one and the column's as the old one, so the cell
    (i, j) is marked when its mAP exceeds the diagonal cell (j, j) of its column.

    Args:
        maps: the N x N mAP, row i's queries searched in column j's database; NaN: no search.

    Returns:
        N x N booleans, False on the diagonal and where there was no search.

    Examples:
        >>> import numpy as np
        >>> from aml.compat import bct_compatible
        >>> bct_compatible(np.array([[0.6, 0.4], [0.7, 0.3]]))
        array([[False,  True],
               [ True, False]])
    """
    maps = np.asarray(maps, dtype=float)
    marked = maps > np.diag(maps)[np.newaxis, :]
    np.fill_diagonal(marked, False)
    return marked
