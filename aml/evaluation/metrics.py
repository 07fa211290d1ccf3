"""Retrieval metrics of the revisited Oxford/Paris protocol (revisitop semantics).

Conventions: ``ranks`` is an N_db x N_q integer array, column q = database indices ranked
best first. Positions are 0-based. Junk images are removed from a ranking, not counted as
negatives: each positive moves up by the number of junk images ranked above it. AP is the
trapezoidal rule with recall step 1/|ok|: for the j-th positive (0-based) at adjusted
position r, precision_0 = 1 if r == 0 else j / r, precision_1 = (j + 1) / (r + 1).
Queries with no positives are skipped. mP@k: with 1-based adjusted positions pos,
kq = min(max(pos), k) and P@k = #(pos <= kq) / kq. A ranking of fewer rows than the database
(a top-k) counts the positives it leaves out as never found, as revisitop's does: its mAP is
the AP within the top k, lower than the full ranking's (test.py always ranks every image).
"""

import logging
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np

from aml.data.formats import GroundTruth
from aml.data.testsets import GND_KEYS, LEVELS
from aml.utils.errors import ConfigError, DataError

_log = logging.getLogger(__name__)  # not "log": compute_map_and_print has a parameter of that name
DEFAULT_KAPPAS = (1, 5, 10)
#: the evaluation protocols: revisited (easy/hard/junk) and classic (ok/junk)
PROTOCOLS = tuple(GND_KEYS)

#: the numbers of one difficulty level of the revisited protocol: its mAP, mP@k by k, and the
#: AP of each query (fractions in [0, 1]; an entry of test.py's results file)
LevelMetrics = TypedDict("LevelMetrics", {"map": float, "mp@k": Dict[int, float], "aps": List[float]})


class Metrics(TypedDict, total=False):
    """The numbers of one search of a test set, as `evaluate_ranks` gives them and test.py's
    results file holds them: ``easy``, ``medium`` and ``hard`` (the revisited protocol), or
    ``map`` and ``aps`` (the classic one)."""

    easy: LevelMetrics
    medium: LevelMetrics
    hard: LevelMetrics
    map: float
    aps: List[float]


def compute_ap(positions: np.ndarray, nres: int) -> float:
    """Trapezoidal AP from the positions of a query's positives in its ranking.

    Args:
        positions: the sorted, junk-adjusted 0-based positions of the positives.
        nres: the query's number of positives (``|ok|``).

    Returns:
        The AP in [0, 1]; 0 without positives.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import compute_ap
        >>> compute_ap(np.array([0, 2]), 2)  # the positives ranked first and third
        0.7916666666666666
        >>> compute_ap(np.array([0, 1]), 2)
        1.0
    """
    positions = np.asarray(positions, dtype=np.float64)
    if nres == 0 or positions.size == 0:
        return 0.0
    found = np.arange(positions.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision_0 = np.where(positions == 0, 1.0, found / positions)
    precision_1 = (found + 1) / (positions + 1)
    return float(np.sum(precision_0 + precision_1) / 2.0 / nres)


def _positions(inverse: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """The sorted positions in the ranking of the images ``members`` lists, each once (an image
    listed twice is at one place: revisitop looks the ranking up in the list)."""
    indices = np.asarray(members, dtype=np.int64).ravel()
    found = inverse[indices[(indices >= 0) & (indices < inverse.size)]]
    return np.unique(found[found >= 0])


def _score_query(inverse: np.ndarray, entry: Mapping[str, Any], kappas: Sequence[int]) -> Tuple[float, np.ndarray]:
    """AP and P@k of one query from the inverse of its ranking (NaN when it has no positives)."""
    ok = np.asarray(entry["ok"], dtype=np.int64).ravel()
    if ok.size == 0:
        return np.nan, np.full(len(kappas), np.nan)
    pos = _positions(inverse, ok.tolist())
    junk = _positions(inverse, entry.get("junk", []))
    pos = pos - np.searchsorted(junk, pos, side="left")
    precisions = np.zeros(len(kappas))
    if pos.size:
        one_based = pos + 1
        for j, k in enumerate(kappas):
            kq = min(int(one_based.max()), k)
            precisions[j] = np.sum(one_based <= kq) / kq
    return compute_ap(pos, ok.size), precisions


def compute_maps(
    ranks: np.ndarray, gnds: Dict[str, Sequence[Mapping[str, Any]]], kappas: Sequence[int] = ()
) -> Dict[str, Tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
    """`compute_map` for several ground truths over the same ranking (E/M/H): each
    ranking is inverted once, in O(N_db), and every protocol looks its images up in it."""
    ranks = np.asarray(ranks)
    _check_ranking(ranks, gnds, "ranks", "N_db x N_q database indices")
    n_db, n_q = ranks.shape
    if ranks.size and ranks.min() < 0:  # numpy would read -1 as the last image
        raise DataError(
            f"ranks hold the index {int(ranks.min())}: each column must rank database images 0, 1, ... (a search's "
            "fill for 'no result', -1, is no image); keep only the results found"
        )
    inverse = np.full(max(n_db, int(ranks.max(initial=-1)) + 1), -1, dtype=np.int64)
    order = np.arange(n_db, dtype=np.int64)

    def inverses():
        for q in range(n_q):
            inverse[:] = -1
            inverse[ranks[:, q]] = order
            yield inverse

    return _maps(inverses(), n_q, gnds, kappas)


def _check_ranking(ranks: np.ndarray, gnds: Dict[str, Sequence[Mapping[str, Any]]], what: str, shape: str) -> None:
    """Refuse a ranking that is not 2-D integers with one column per query of the ground truth
    (a Q x N_db one, numpy's ``argsort(-scores, axis=1)``, was read a column at a time)."""
    if ranks.ndim != 2 or not (np.issubdtype(ranks.dtype, np.integer) or ranks.size == 0):
        raise DataError(f"{what} must be {shape}, integers, one column per query; got {ranks.dtype} of {ranks.shape}")
    for gnd in gnds.values():
        if len(gnd) != ranks.shape[1]:
            hint = "; pass them transposed (.T)" if ranks.shape[0] == len(gnd) else ""
            raise DataError(
                f"{what} of shape {ranks.shape} rank {ranks.shape[1]} queries (columns) and the ground truth has "
                f"{len(gnd)}: {what} are {shape}, one column per query{hint}"
            )


def compute_maps_from_positions(
    positions: np.ndarray, gnds: Dict[str, Sequence[Mapping[str, Any]]], kappas: Sequence[int] = ()
) -> Dict[str, Tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
    """`compute_maps` from ``positions`` (N x Q: 0-based place of database image i in
    the ranking of query q) instead of the ranking itself: all that mAP and mP@k need, so a
    search over 1M distractors need only return the places of the test set's own images."""
    _check_ranking(np.asarray(positions), gnds, "positions", "N_db x N_q places")
    positions = np.asarray(positions, dtype=np.int64)
    return _maps((positions[:, q] for q in range(positions.shape[1])), positions.shape[1], gnds, kappas)


def _maps(
    inverses, n_q: int, gnds: Dict[str, Sequence[Mapping[str, Any]]], kappas: Sequence[int]
) -> Dict[str, Tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
    aps = {name: np.full(n_q, np.nan) for name in gnds}
    prs = {name: np.full((n_q, len(kappas)), np.nan) for name in gnds}
    for q, inverse in enumerate(inverses):
        for name, gnd in gnds.items():
            aps[name][q], prs[name][q] = _score_query(inverse, gnd[q], kappas)
    results = {}
    for name in gnds:
        valid = ~np.isnan(aps[name])
        # no query with a positive: undefined (revisitop divides by zero), not 0 (a network that found nothing)
        m_ap = float(aps[name][valid].mean()) if valid.any() else float("nan")
        pr = prs[name][valid].mean(axis=0) if valid.any() else np.full(len(kappas), np.nan)
        results[name] = (m_ap, aps[name], pr, prs[name])
    return results


def compute_map(
    ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = ()
) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """mAP, per-query AP, mP@k and per-query P@k of a ranking.

    Each query costs O(N_db): the ranking is inverted once and positives/junk are looked up.
    Queries without positives are skipped.

    Args:
        ranks: N_db x N_q database indices, column q ranked best first; a top-k (fewer rows)
            scores the positives below it as never found.
        gnd: per query, ``ok`` (the positives) and optionally ``junk``.
        kappas: the k of mP@k.

    Returns:
        The tuple (mAP, per-query AP, mP@k, per-query P@k), with NaN rows for skipped queries.

    Raises:
        DataError: when ``ranks`` holds a negative index (faiss's -1 for "no result").

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import compute_map
        >>> ranks = np.array([[0, 1], [1, 0], [2, 2]])  # column q: query q's ranking
        >>> gnd = [{"ok": [2]}, {"ok": [0, 2], "junk": [1]}]
        >>> m_ap, aps, mpk, pks = compute_map(ranks, gnd, kappas=[1])
        >>> round(m_ap, 4), aps.round(4).tolist(), mpk.tolist()
        (0.5833, [0.1667, 1.0], [0.5])
    """
    return compute_maps(ranks, {"gnd": gnd}, kappas)["gnd"]


def revisited_gnd(gnd: Sequence[Mapping[str, Any]], difficulty: str) -> List[Dict[str, np.ndarray]]:
    """Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard, junk = junk.
    Hard: ok = hard, junk = junk + easy."""
    rules = {
        "easy": (("easy",), ("junk", "hard")),
        "medium": (("easy", "hard"), ("junk",)),
        "hard": (("hard",), ("junk", "easy")),
    }
    ok_keys, junk_keys = rules[difficulty]

    def cat(entry, keys):
        return np.concatenate([np.asarray(entry.get(k, []), dtype=np.int64).ravel() for k in keys])

    return [{"ok": cat(g, ok_keys), "junk": cat(g, junk_keys)} for g in gnd]


def evaluate_ranks(
    ranks: np.ndarray, gnd: Sequence[GroundTruth], protocol: str, kappas: Sequence[int] = DEFAULT_KAPPAS
) -> Metrics:
    """All numbers of one test set as a dict (fractions in [0, 1]).

    Args:
        ranks: N_db x N_q database indices, column q ranked best first.
        gnd: per query, ``easy``, ``hard`` and ``junk`` (revisited) or ``ok`` and ``junk``
            (classic).
        protocol: ``"revisited"`` (roxford5k, rparis6k) or ``"classic"`` (oxford5k, paris6k).
        kappas: the k of mP@k (revisited).

    Returns:
        For ``"revisited"``, ``{'easy': {'map', 'mp@k', 'aps'}, 'medium': ..., 'hard': ...}``;
        for ``"classic"``, ``{'map': ..., 'aps': ...}`` from ok/junk.

    Raises:
        ConfigError: for a protocol other than `PROTOCOLS`, listing them (a ValueError).

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import evaluate_ranks
        >>> ranks = np.array([[3], [0], [1], [2]])
        >>> gnd = [{"easy": [0], "hard": [2], "junk": [3]}]
        >>> results = evaluate_ranks(ranks, gnd, "revisited", kappas=(1, 2))
        >>> results["easy"]["map"], results["hard"]["map"], results["hard"]["mp@k"]
        (1.0, 0.25, {1: 0.0, 2: 0.5})
    """
    return _evaluate(compute_maps, ranks, gnd, protocol, kappas)


def evaluate_positions(
    places: np.ndarray, gnd: Sequence[GroundTruth], protocol: str, kappas: Sequence[int] = DEFAULT_KAPPAS
) -> Metrics:
    """`evaluate_ranks` from the places of the database images instead of their ranks.

    Args:
        places: N_db x N_q, the 0-based place of database image i in query q's ranking (the
            inverse of each column of ``ranks``; what `aml.evaluation.database.TestDatabase`'s
            ``positions`` gives without sorting the whole database).
        gnd: per query, as for `evaluate_ranks`.
        protocol: ``"revisited"`` or ``"classic"``.
        kappas: the k of mP@k (revisited).

    Returns:
        The numbers `evaluate_ranks` gives for the ranking these places describe.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation import evaluate_positions
        >>> places = np.array([[1], [2], [3], [0]])  # the ranking [3, 0, 1, 2]
        >>> gnd = [{"easy": [0], "hard": [2], "junk": [3]}]
        >>> evaluate_positions(places, gnd, "revisited", kappas=(1, 2))["hard"]["map"]
        0.25
    """
    return _evaluate(compute_maps_from_positions, places, gnd, protocol, kappas)


def _evaluate(
    maps_of: Callable[..., Dict[str, Any]],
    ranking: np.ndarray,
    gnd: Sequence[GroundTruth],
    protocol: str,
    kappas: Sequence[int],
) -> Metrics:
    """`evaluate_ranks` and `evaluate_positions`, ``maps_of`` reading their ``ranking``."""
    _check_ground_truth(gnd, protocol)
    if protocol == "classic":
        m_ap, aps, _, _ = maps_of(ranking, {"gnd": gnd})["gnd"]
        return {"map": m_ap, "aps": aps.tolist()}
    maps = maps_of(ranking, {d: revisited_gnd(gnd, d) for d in LEVELS}, kappas)
    levels: Dict[str, LevelMetrics] = {
        d: {"map": m_ap, "mp@k": dict(zip([int(k) for k in kappas], pr.tolist(), strict=True)), "aps": aps.tolist()}
        for d, (m_ap, aps, pr, _) in maps.items()
    }
    return {"easy": levels["easy"], "medium": levels["medium"], "hard": levels["hard"]}


def _check_ground_truth(gnd: Sequence[GroundTruth], protocol: str) -> None:
    """Refuse an unknown protocol, and a ground truth that is not one dict per query holding
    the protocol's keys (a revisited search of a classic gnd found no positive: NaN, silently)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: the known ones are {', '.join(PROTOCOLS)}")
    if isinstance(gnd, Mapping) or not all(isinstance(entry, Mapping) for entry in gnd):
        raise ConfigError(
            f"the ground truth is a list of one dict per query ({{'easy': [...], 'hard': [...], 'junk': [...]}}), "
            f"got {type(gnd).__name__}"
            + (" holding " + type(gnd[0]).__name__ if isinstance(gnd, list) and gnd else "")
            + ("; put one query's dict in a list" if isinstance(gnd, Mapping) else "")
        )
    needed = ("ok",) if protocol == "classic" else ("easy", "hard")
    lacking = next((q for q, entry in enumerate(gnd) if not all(key in entry for key in needed)), None)
    if lacking is not None:
        other = "revisited" if protocol == "classic" else "classic"
        of_other = all(key in gnd[lacking] for key in (("easy", "hard") if other == "revisited" else ("ok",)))
        raise DataError(
            f"the ground truth of query {lacking} has {sorted(gnd[lacking])}, not {' and '.join(needed)}: "
            f"the {protocol} protocol needs them"
            + (f"; a ground truth of the {other} protocol is evaluated with protocol={other!r}" if of_other else "")
        )


def format_results(dataset: str, results: Metrics, kappas: Sequence[int] = DEFAULT_KAPPAS) -> List[str]:
    """The original's printed lines (percentages, 2 decimals).

    Args:
        dataset: the test set's name.
        results: what `evaluate_ranks` returns for it.
        kappas: the k of the mP@k printed (revisited).

    Returns:
        One line of mAP (classic), or a line of mAP and one of mP@k at Easy, Medium and
        Hard (revisited).

    Examples:
        >>> from aml.evaluation import format_results
        >>> format_results("oxford5k", {"map": 0.8125, "aps": [0.8125]})
        ['>> oxford5k: mAP 81.25']
        >>> results = {level: {"map": 0.5, "mp@k": {1: 1.0, 5: 0.4}} for level in ("easy", "medium", "hard")}
        >>> for line in format_results("roxford5k", results, kappas=(1, 5)):
        ...     print(line)
        >> roxford5k: mAP E: 50.0, M: 50.0, H: 50.0
        >> roxford5k: mP@k[1, 5] E: [100.  40.], M: [100.  40.], H: [100.  40.]
    """
    if "map" in results:
        return [f">> {dataset}: mAP {100 * results['map']:.2f}"]
    pct = {d: np.around(100 * results[d]["map"], decimals=2) for d in LEVELS}
    mpk = {d: np.around(100 * np.array([results[d]["mp@k"][k] for k in kappas]), decimals=2) for d in LEVELS}
    return [
        f">> {dataset}: mAP E: {pct['easy']}, M: {pct['medium']}, H: {pct['hard']}",
        f">> {dataset}: mP@k{list(kappas)} E: {mpk['easy']}, M: {mpk['medium']}, H: {mpk['hard']}",
    ]


def _kappas_and_log(
    given: Sequence[Any], kappas: Optional[Sequence[int]], log_file: Optional[IO[str]]
) -> Tuple[Tuple[int, ...], Optional[IO[str]]]:
    """The k of mP@k and the log of `compute_map_and_print`'s arguments after ``gnd``: by
    position cirtorch's ``kappas`` or the original aml's ``log, kappas`` (a file is the log),
    else by keyword (``kappas=``, and ``log_file=`` or the original aml's ``log=``)."""
    if len(given) > 2:
        raise TypeError(f"compute_map_and_print takes at most 2 arguments after gnd ({len(given)} given)")
    for value in given:
        if hasattr(value, "write"):
            if log_file is not None:
                raise TypeError("compute_map_and_print got two logs")
            log_file = value
        elif kappas is None:
            kappas = value
        else:
            raise TypeError("compute_map_and_print got kappas twice")
    return tuple(kappas if kappas is not None else DEFAULT_KAPPAS), log_file


def compute_map_and_print(
    dataset: str,
    ranks: np.ndarray,
    gnd: Sequence[GroundTruth],
    *files_or_kappas: Union[Sequence[int], IO[str]],
    kappas: Optional[Sequence[int]] = None,
    log_file: Optional[IO[str]] = None,
    log: Optional[IO[str]] = None,
) -> Metrics:
    """cirtorch's and the original aml's ``compute_map_and_print``, for code written against them.

    The numbers of `evaluate_ranks` under the protocol the ground truth follows
    (easy/hard/junk: revisited, ok/junk: classic), their lines (`format_results`) logged, as
    aml's library does (the originals printed them), and written to ``log_file`` when given.

    Args:
        dataset: the test set's name, for the lines.
        ranks: N_db x N_q database indices, best first per column.
        gnd: per query, its lists.
        files_or_kappas: cirtorch's ``kappas``, or the original aml's ``log, kappas``, by
            position (a file is the log).
        kappas: the k of mP@k (default 1, 5 and 10).
        log_file: where the lines are written too.
        log: the same, by the original aml's name.

    Returns:
        `evaluate_ranks`'s numbers.

    Examples:
        >>> import io
        >>> import numpy as np
        >>> from aml.evaluation import compute_map_and_print
        >>> out = io.StringIO()
        >>> results = compute_map_and_print("mine", np.array([[1], [0]]), [{"ok": [0], "junk": []}], out)
        >>> results["map"], out.getvalue().strip()
        (0.25, '>> mine: mAP 25.00')
    """
    if log is not None and log_file is not None:
        raise TypeError("compute_map_and_print got log and log_file: give one")
    kappas, log_file = _kappas_and_log(files_or_kappas, kappas, log if log is not None else log_file)
    protocol = "revisited" if gnd and "easy" in gnd[0] else "classic"
    results = evaluate_ranks(np.asarray(ranks), gnd, protocol, kappas)
    for line in format_results(dataset, results, kappas):
        _log.info(line)
        if log_file is not None:
            log_file.write(line + "\n")
    return results
