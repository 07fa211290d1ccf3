"""Rankings by dot product of L2-normalised descriptors: the full ranking of a test set's
database, each query's first neighbours, and the places of the database's images when a large
distractor set is added (read block by block, with bounded memory)."""

import itertools
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from aml.descriptors.extraction import NonFiniteDescriptors
from aml.utils.devices import available_device
from aml.utils.errors import ConfigError

Transform = Callable[[torch.Tensor], torch.Tensor]  # n x D float32 rows -> n x d float32 rows, on their device


def _finite(columns: torch.Tensor, what: str, first: int = 0) -> torch.Tensor:
    """``columns`` (D x n descriptors), refused when one holds NaN or infinite values: a NaN
    scores as nothing and would rank silently at random."""
    bad = (~torch.isfinite(columns)).any(dim=0)
    if bool(bad.any()):
        raise NonFiniteDescriptors(
            f"{int(bad.sum())} of the {columns.shape[1]} {what} descriptors hold NaN or "
            f"infinite values (the first: {what} {first + int(bad.nonzero()[0])}); they cannot "
            "be ranked: encode them again"
        )
    return columns


def check_columns(database: np.ndarray, queries: np.ndarray) -> None:
    """Refuse descriptors that are not D x N columns of one dimension D: other shapes, or
    queries given as rows (Q x D, numpy's habit: unit-norm rows, columns that are not).

    Args:
        database: D x N_db descriptors.
        queries: D x N_q descriptors.

    Raises:
        ConfigError: naming the shapes and the fix.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.ranking import check_columns
        >>> check_columns(np.eye(4)[:, :3], np.eye(4)[:, :1])
        >>> check_columns(np.eye(4)[:, :3], np.eye(4)[:1])
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: the database is 4 x 3 and the queries 1 x 4: descriptors are ...
    """
    shapes = [tuple(np.shape(a)) for a in (database, queries)]
    if any(len(shape) != 2 for shape in shapes) or shapes[0][0] != shapes[1][0]:
        raise ConfigError(
            f"the database is {' x '.join(map(str, shapes[0]))} and the queries {' x '.join(map(str, shapes[1]))}: "
            "descriptors are D x N, one column per image, of one dimension D; pass the side given as rows "
            "transposed (.T), or encode both sides in one space (a student of this teacher)"
        )
    check_not_rows(np.asarray(queries), "query")


def check_not_rows(vectors: np.ndarray, what: str) -> None:
    """Refuse D x N descriptors given as rows (N x D, numpy's habit), which their norms tell:
    unit-norm rows, columns that are not (a square matrix cannot tell and passes).

    Args:
        vectors: a 2-D array of descriptors.
        what: what they are, for the message (``queries``, ``database``).

    Raises:
        ConfigError: naming the fix (.T).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.ranking import check_not_rows
        >>> check_not_rows(np.eye(4)[:, :3], "database")
        >>> check_not_rows(np.eye(4)[:3], "database")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: 3 x 4 database descriptors whose rows are unit vectors and columns are not: ...
    """
    if vectors.shape[0] != vectors.shape[1] and vectors.size and _unit(vectors, 1) and not _unit(vectors, 0):
        raise ConfigError(
            f"{vectors.shape[0]} x {vectors.shape[1]} {what} descriptors whose rows are unit vectors and columns "
            "are not: descriptors are D x N, one L2-normalised column per image; pass them transposed (.T)"
        )


def check_ranking(ranks: np.ndarray, queries: int, images: int, what: str) -> None:
    """Refuse what is not a ranking of a database of ``images`` images for ``queries`` queries:
    k x Q integer indices in [0, images), a column per query (as `rank_database` returns it).

    Args:
        ranks: the ranking given.
        queries: Q, the queries it ranks for.
        images: N, the database's images (with distractors, those too).
        what: the step that reads it, for the message.

    Raises:
        ConfigError: naming what is wrong and the fix.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.ranking import check_ranking
        >>> check_ranking(np.array([[2, 0], [0, 1]]), queries=2, images=3, what="αQE")
        >>> check_ranking(np.array([[3], [0]]), queries=1, images=3, what="αQE")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: αQE: the ranking holds index 3, outside the database's 3 images ...
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != queries:
        transposed = "; pass it transposed (.T)" if ranks.ndim == 2 and ranks.shape[0] == queries else ""
        raise ConfigError(
            f"{what}: the ranking is {' x '.join(map(str, ranks.shape))} for {queries} queries: it is k x Q, a "
            f"column of database indices per query, best first, as rank_database returns it{transposed}"
        )
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ConfigError(f"{what}: the ranking holds {ranks.dtype} values, not database indices (integers)")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= images):
        bad = int(ranks.min()) if ranks.min() < 0 else int(ranks.max())
        raise ConfigError(
            f"{what}: the ranking holds index {bad}, outside the database's {images} images (0..{images - 1}); "
            "the database given must hold every image the ranking names (with distractors, those too)"
        )


def _unit(a: np.ndarray, axis: int) -> bool:
    return bool(np.allclose(np.linalg.norm(a, axis=axis), 1.0, atol=1e-3))


def check_excluded(excluded: Sequence[int], images: int) -> None:
    """Refuse ``excluded`` images that are not indices of a database of ``images`` images (a
    negative one would take another image's place at the end of the ranking).

    Args:
        excluded: the indices given.
        images: N, the database's images.

    Raises:
        ConfigError: naming the first index out of place and the range.

    Examples:
        >>> from aml.evaluation.ranking import check_excluded
        >>> check_excluded([0, 2], images=3)
        >>> check_excluded([-1], images=3)
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: excluded holds -1, not an index of the database's 3 images (0 to 2)
    """
    for index in np.asarray(list(excluded)).tolist():  # numpy's and torch's integers as Python's
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < images:
            raise ConfigError(
                f"excluded holds {index!r}, not an index of the database's {images} images (0 to {images - 1})"
            )


def _scores(database: np.ndarray, queries: np.ndarray, device: str, excluded: Sequence[int]) -> torch.Tensor:
    """Q x N dot products; ``excluded`` columns at -inf. Non-finite descriptors are refused."""
    check_columns(database, queries)
    check_excluded(excluded, database.shape[1])
    available_device(device, f"device={device!r}")  # aml's error for a device this machine lacks
    db = _finite(torch.as_tensor(np.ascontiguousarray(database), dtype=torch.float32, device=device), "database")
    q = _finite(torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.float32, device=device), "query")
    return _scored(db, q, excluded)


def _scored(db: torch.Tensor, q: torch.Tensor, excluded: Sequence[int]) -> torch.Tensor:
    """Q x N dot products of descriptors on one device, as a block of distractors is scored
    (`padded_products`: a database narrower than a block is padded, so that its scores equal those of
    the same images among distractors, bit for bit); ``excluded`` columns at -inf."""
    scores = padded_products(q, db.t())
    if len(excluded):
        scores[:, torch.as_tensor(list(excluded), dtype=torch.long, device=scores.device)] = -torch.inf
    return scores


def rank_database(
    database: np.ndarray, queries: np.ndarray, device: str = "cpu", excluded: Sequence[int] = ()
) -> np.ndarray:
    """The database ranked for every query by dot product, best first.

    The score matrix is one matrix product; each query's scores are sorted as one contiguous
    row on ``device``. The result is a transposed view of the Q x N_db sort (no copy); column
    q is contiguous. Equal scores keep the database order, on every device
    (`descending_order`).

    Args:
        database: D x N_db descriptors.
        queries: D x N_q descriptors.
        device: where the scores are computed and sorted (``"cpu"``, ``"cuda"``, ...).
        excluded: database images (unreadable ones that were skipped) that rank last, for
            every query.

    Returns:
        N_db x N_q database indices, column q ranked best first.

    Raises:
        aml.descriptors.extraction.NonFiniteDescriptors: when a query or database descriptor
            holds NaN or infinite values, naming which.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import rank_database
        >>> database = np.eye(3, dtype=np.float32)  # three 3-d descriptors
        >>> queries = np.array([[0.0], [0.6], [0.8]], dtype=np.float32)
        >>> rank_database(database, queries)[:, 0]
        array([2, 1, 0])
        >>> rank_database(database, queries, excluded=[2])[:, 0]
        array([1, 0, 2])
    """
    scores = _scores(database, queries, device, excluded)
    if scores.device.type == "cpu":
        return descending_order(scores.numpy()).T
    return torch.argsort(scores, dim=1, descending=True, stable=True).cpu().numpy().T


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Q x N column indices of each row by descending score, equal scores in ascending
    index order: the order of a stable sort. On the CPU it sorts with numpy's introsort of
    contiguous rows, exact but unstable; runs of equal scores (float32 scores collide often,
    skipped images all score -inf) are then put in index order, each run sorted once by index
    (one lexicographic sort of the tied places alone: linear in the runs' lengths, not quadratic)."""
    order = np.argsort(-scores, axis=1)
    ranked = torch.gather(torch.from_numpy(scores), 1, torch.from_numpy(order)).numpy()  # faster than numpy's
    tied = ranked[:, 1:] == ranked[:, :-1]  # place c + 1 has the score of place c
    if not tied.any():
        return order
    member = np.zeros(ranked.shape, dtype=bool)
    member[:, 1:] |= tied
    member[:, :-1] |= tied
    rows, cols = np.nonzero(member)  # row by row, each run's places together and in order
    follows = np.zeros(len(rows), dtype=bool)  # a place that continues the run of the one before it
    follows[1:] = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1] + 1) & tied[rows[1:], np.maximum(cols[1:] - 1, 0)]
    run = np.cumsum(~follows)
    indices = order[rows, cols]
    order[rows, cols] = indices[np.lexsort((indices, run))]  # by run, then by index within it
    return order


def positions_with_distractors(
    database: np.ndarray,
    queries: np.ndarray,
    distractors: Iterable[Tuple[int, np.ndarray]],
    device: str = "cpu",
    excluded: Sequence[int] = (),
    excluded_distractors: Sequence[int] = (),
    transform: Optional[Transform] = None,
) -> np.ndarray:
    """N_db x N_q places (0-based) of the test database's images in the ranking of the test
    database followed by the distractors, without forming that ranking.

    ``distractors`` yields (first index, n_k x D block) in order (a descriptor store's
    shards). The database scores of each query are sorted once; each distractor's score is
    looked up among them (how many database images it beats) and counted, and a reverse
    cumulative sum of the counts gives, for every database image, the distractors above
    it. Memory holds one block and its Q x n_k scores, never the Q x (N + M) matrix. The places
    equal those of `rank_database` on the
    concatenation: equal scores keep the order, database images before distractors.
    ``excluded`` / ``excluded_distractors`` (unreadable images) score -inf. ``transform``
    applies to every block (the queries and database come transformed already).
    """
    scores = _scores(database, queries, device, excluded)
    n_q, n_db = scores.shape
    ascending, order = torch.sort(scores, dim=1, stable=True)
    # hits[q, j]: distractors whose score lies above exactly j of the query's database scores
    hits = torch.zeros(n_q, n_db + 1, dtype=torch.long, device=device)
    for _, _, block_scores in _distractor_scores(queries, distractors, device, transform, excluded_distractors):
        below = torch.searchsorted(ascending, block_scores)  # database scores strictly below each distractor
        hits.scatter_add_(1, below, torch.ones_like(below))
    # distractors strictly above the j-th lowest database score: those above more than j of them
    above_sorted = hits.flip(1).cumsum(1).flip(1)[:, 1:]
    above = torch.empty_like(above_sorted).scatter_(1, order, above_sorted)
    descending = torch.argsort(scores, dim=1, descending=True, stable=True)
    places = torch.empty_like(descending)
    places.scatter_(1, descending, torch.arange(n_db, device=device).expand(n_q, n_db).contiguous())
    places += above
    return places.cpu().numpy().T


NEIGHBOUR_CHUNK = 1024  # queries whose scores `nearest` takes at once, at most
SCORE_VALUES = 1 << 28  # and at most this many scores (float32: 1 GiB) at once


def nearest(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    device: str = "cpu",
    excluded: Sequence[int] = (),
    skip_self: bool = False,
) -> np.ndarray:
    """k x N_q indices of each query's ``k`` best database images: the first ``k`` rows of
    `rank_database` (equal scores in database order), found by `top_in_order` for a few
    queries at a time (``NEIGHBOUR_CHUNK``, and no more than ``SCORE_VALUES`` scores). The
    database goes to ``device`` and is checked once. ``skip_self``: the queries are the
    database itself and column q never lists q (database-side augmentation)."""
    check_excluded(excluded, database.shape[1])
    available_device(device, f"device={device!r}")  # aml's error for a device this machine lacks
    # as it is: a store's D x N array is a view of rows, which a contiguous copy would double
    db = _finite(torch.as_tensor(database, dtype=torch.float32, device=device), "database")
    if queries is not database:  # checked whole, on the host
        _finite(torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.float32), "query")
    chunk = max(1, min(NEIGHBOUR_CHUNK, SCORE_VALUES // max(db.shape[1], 1)))
    found = []
    for part in even_parts(queries.shape[1], chunk) if queries.shape[1] else []:
        block = np.ascontiguousarray(queries[:, part])
        scores = _scored(db, torch.as_tensor(block, dtype=torch.float32, device=device), excluded)
        if skip_self:
            rows = torch.arange(scores.shape[0], device=scores.device)
            scores[rows, rows + part.start] = -torch.inf
        found.append(top_in_order(scores, k).cpu().numpy())
    return np.concatenate(found, axis=0).T if found else np.zeros((k, 0), dtype=np.int64)


def even_parts(count: int, most: int) -> List[slice]:
    """``count`` items in as few parts of at most ``most`` as can be, of sizes that differ by one
    at most: a part of a few queries alone would be scored by BLAS with other rounding than
    many together (a product of 1 to 3 rows takes another path), so no part is left that small.

    Args:
        count: the items (queries).
        most: the most items a part may hold.

    Returns:
        The parts, as slices in order; one empty part for no item.

    Examples:
        >>> from aml.evaluation.ranking import even_parts
        >>> [(p.start, p.stop) for p in even_parts(1025, 1024)]
        [(0, 512), (512, 1025)]
    """
    parts = max(1, -(-count // max(most, 1)))
    bounds = [count * i // parts for i in range(parts + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def top_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Q x k column indices of each row's ``k`` highest scores, highest first, equal scores in
    ascending column order: the first ``k`` columns of a stable descending sort, without
    sorting whole rows.

    The k-th highest score of each row bounds the candidates (every score at or above it);
    the widest row's count of them is taken by ``topk``, put in column order, then sorted
    stably by score.

    Args:
        scores: Q x N scores, without NaN.
        k: the columns to keep (at most N).

    Returns:
        Q x k int64 column indices.

    Examples:
        >>> import torch
        >>> from aml.evaluation.ranking import top_in_order
        >>> top_in_order(torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5]]), 3).tolist()
        [[1, 0, 2]]
    """
    k = min(k, scores.shape[1])
    if k == 0 or scores.shape[0] == 0:
        return torch.zeros(scores.shape[0], k, dtype=torch.long, device=scores.device)
    top = torch.topk(scores, k, dim=1)
    width = int(_count_at_least(scores, top.values[:, -1:]).max())  # k, or more where the k-th score ties
    if width > k:
        top = torch.topk(scores, width, dim=1)
    columns, placed = torch.sort(top.indices, dim=1)
    order = torch.argsort(torch.gather(top.values, 1, placed), dim=1, descending=True, stable=True)
    return torch.gather(columns, 1, order)[:, :k]


#: columns of scores compared with a threshold at once (a mask of the whole matrix is summed in int64)
COUNTED_COLUMNS = 1 << 16


def _count_at_least(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per row, how many scores are at or above its ``threshold``, a slice of columns at a time."""
    count = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    for start in range(0, scores.shape[1], COUNTED_COLUMNS):
        count += (scores[:, start : start + COUNTED_COLUMNS] >= threshold).sum(dim=1)
    return count


#: the most descriptor values (float32: 512 MiB) of neighbours that one step of a re-ranking
#: holds at once: `nearest_with_distractors` keeps all its queries' k neighbours (Q x k x D, so
#: k is bounded), the expansions of `aml.evaluation.reranking` gather them by chunks of columns
NEIGHBOUR_VALUES = 1 << 27


def most_neighbours(queries: int, dim: int) -> int:
    """The largest k whose Q x k x D neighbours `nearest_with_distractors` may keep (`NEIGHBOUR_VALUES`)."""
    return NEIGHBOUR_VALUES // max(queries * dim, 1)


def nearest_with_distractors(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    distractors: Iterable[Tuple[int, np.ndarray]],
    device: str = "cpu",
    excluded: Sequence[int] = (),
    excluded_distractors: Sequence[int] = (),
    transform: Optional[Transform] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` best images of the test database followed by the distractors, and
    their descriptors, without forming the ranking of both.

    The database's top ``k`` is merged with each block's scores in turn (one stable sort of
    the ``k`` kept and the block's), so equal scores keep the order of the concatenation:
    database images first, then distractors by index, exactly the first ``k`` rows of
    `rank_database` on the concatenation. Memory holds one block, its Q x n_k scores and the
    Q x k x D descriptors kept. ``excluded`` / ``excluded_distractors`` score -inf;
    ``transform`` applies to every block (the queries and database come transformed).

    Returns:
        k x N_q indices into the concatenation (database images 0..N-1, distractor i at N + i),
        and their D x k x N_q descriptors (float32; transformed distractors).

    Raises:
        ConfigError: when the Q x k x D descriptors kept would pass `NEIGHBOUR_VALUES`.
    """
    dim, n_queries = queries.shape
    if k > most_neighbours(n_queries, dim):
        raise ConfigError(
            f"{n_queries} queries keeping their {k} nearest {dim}-d descriptors would hold "
            f"{_gib(n_queries * k * dim)} (at most {_gib(NEIGHBOUR_VALUES)}): give k "
            f"{most_neighbours(n_queries, dim)} or less"
        )
    scores = _scores(database, queries, device, excluded)  # Q x N
    n_db = scores.shape[1]
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    best = torch.gather(scores, 1, order)
    indices = order
    db_rows = torch.as_tensor(np.ascontiguousarray(database.T), dtype=torch.float32, device=device)
    vectors = db_rows[order]  # Q x k x D
    for start, rows, block_scores in _distractor_scores(queries, distractors, device, transform, excluded_distractors):
        kept = best.shape[1]
        merged = torch.argsort(torch.cat([best, block_scores], 1), dim=1, descending=True, stable=True)[:, :k]
        from_block = merged >= kept
        block_pick = (merged - kept).clamp(min=0)
        kept_pick = merged.clamp(max=max(kept - 1, 0))
        best = torch.where(
            from_block,
            torch.gather(block_scores, 1, block_pick),
            torch.gather(best, 1, kept_pick) if kept else block_scores.new_zeros(merged.shape),
        )
        indices = torch.where(
            from_block, block_pick + n_db + start, torch.gather(indices, 1, kept_pick) if kept else merged
        )
        # the kept neighbours in their new places, then the block's written over theirs: twice Q x k x D at most
        moved = (
            torch.gather(vectors, 1, kept_pick[..., None].expand(-1, -1, vectors.shape[2]))
            if kept
            else rows.new_zeros(*merged.shape, rows.shape[1])
        )
        moved[from_block] = rows[block_pick[from_block]]
        vectors = moved
    return indices.cpu().numpy().T, np.ascontiguousarray(vectors.cpu().numpy().transpose(2, 1, 0))


def _gib(values: int) -> str:
    return f"{values * 4 / 2**30:.3g} GiB"


def _distractor_scores(
    queries: np.ndarray, distractors, device: str, transform: Optional[Transform], excluded: Sequence[int]
) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
    """Per distractor block: its first index, its n_k x D rows and the Q x n_k scores of the
    queries, -inf for the ``excluded`` distractors."""
    q = torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.float32, device=device)
    listed = sorted(np.asarray(list(excluded)).tolist())  # numpy's and torch's integers as Python's
    bad = next((i for i in listed if isinstance(i, bool) or not isinstance(i, int) or i < 0), None)
    if bad is not None:  # a negative one was ignored without a word
        raise ConfigError(f"excluded_distractors holds {bad!r}, not a distractor's index (an integer from 0)")
    skipped = torch.as_tensor(listed, dtype=torch.long, device=device)
    seen = 0
    for start, block in distractors:
        rows = _block_rows(block, device, transform)  # n_k x D float32
        _finite(rows.t(), "distractor", start)
        block_scores = padded_products(q, rows)
        gone = skipped[(skipped >= start) & (skipped < start + rows.shape[0])] - start
        if len(gone):
            block_scores[:, gone] = -torch.inf
        seen = start + rows.shape[0]
        yield start, rows, block_scores
    if listed and listed[-1] >= seen:  # known once every block has come
        raise ConfigError(f"excluded_distractors holds {listed[-1]}, past the last of the {seen} distractors")


def _block_rows(block: np.ndarray, device: str, transform: Optional[Transform]) -> torch.Tensor:
    """A stored n_k x D block as float32 rows on ``device`` (converted by torch, not numpy),
    transformed there when asked."""
    rows = torch.from_numpy(np.asarray(block)).to(device=device, dtype=torch.float32)
    return rows if transform is None else transform(rows)


#: the database rows `padded_products` multiplies at once: every block, whatever its width,
#: layout and place, is copied into one buffer of this many rows, so that every score comes
#: from the same product (BLAS rounds by a product's shapes and layout)
SCORED_ROWS = 1024


def padded_products(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Q x n scores of a block of rows, bit for bit those of the same columns in one D x N
    database product, whatever the block's width and place and the layout of the descriptors
    (tested under MKL's AVX-512, AVX2 and SSE4.2 code, on one thread): BLAS computes a product
    of one column, or of one query, by another path (gemv), and rounds by a product's shapes
    and layout (on an Intel Xeon, a product of rows otherwise than one of columns, and at each
    width), so the rows are multiplied `SCORED_ROWS` at a time, copied into one zero-padded
    buffer of rows (a memory copy for a store's), and a single query is paired with a zero one. (A product of 1 to 3
    queries still rounds otherwise than the same queries among more: callers split many
    queries by `even_parts`.)

    Args:
        queries: D x Q query descriptors.
        rows: n x D descriptors, one per row (a transposed view of D x n columns is one too).

    Returns:
        The Q x n scores, contiguous.

    Examples:
        >>> import torch
        >>> from aml.evaluation.ranking import padded_products
        >>> padded_products(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
        tensor([[3., 2.]])
    """
    if queries.shape[1] == 1:
        pair = torch.cat([queries, torch.zeros_like(queries)], dim=1)
        return padded_products(pair, rows)[:1].contiguous()
    queries = queries.contiguous()
    count, dim = rows.shape
    scores = torch.empty(queries.shape[1], count, dtype=queries.dtype, device=queries.device)
    buffer = torch.zeros(SCORED_ROWS, dim, dtype=rows.dtype, device=rows.device)
    for start in range(0, count, SCORED_ROWS):
        block = rows[start : start + SCORED_ROWS]
        buffer[len(block) :] = 0  # the last block's padding
        buffer[: len(block)] = block
        scores[:, start : start + len(block)] = (buffer @ queries)[: len(block)].t()
    return scores
