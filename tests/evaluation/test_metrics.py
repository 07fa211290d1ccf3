"""compute_map against hand-made rankings (the revisitop conventions)."""

import numpy as np
import pytest

from aml.evaluation.metrics import compute_ap, compute_map, evaluate_ranks, format_results, revisited_gnd
from aml.utils.errors import ConfigError


def ranks_of(*columns):
    return np.array(columns).T


def test_ap_without_junk():
    m, aps, pr, _ = compute_map(ranks_of([0, 1, 2, 3, 4]), [{"ok": [1, 3]}], kappas=[1, 5, 10])
    assert m == pytest.approx(1 / 3)
    assert pr == pytest.approx([0.0, 0.5, 0.5])


def test_junk_is_removed_from_the_ranking():
    m, _, pr, _ = compute_map(ranks_of([0, 1, 2, 3, 4]), [{"ok": [1, 3], "junk": [0]}], kappas=[1, 5, 10])
    assert m == pytest.approx(0.7916666666)
    assert pr == pytest.approx([1.0, 2 / 3, 2 / 3])


def test_all_positives_first_after_junk_gives_one():
    m, _, _, _ = compute_map(ranks_of([5, 1, 2, 3, 0, 4]), [{"ok": [1, 3], "junk": [5, 2]}])
    assert m == pytest.approx(1.0)


def test_an_image_listed_twice_counts_once_as_revisitop_counts_it():
    """revisitop finds the ranking's images in the lists (np.in1d): a repeated index is one
    place; the AP still divides by the list's length, as revisitop's does."""
    m, _, _, _ = compute_map(ranks_of([3, 0, 1, 2]), [{"ok": [0, 0]}])
    assert m == pytest.approx((0 / 1 + 1 / 2) / 2 / 2)  # one positive at place 1 of a list of 2
    m, _, _, _ = compute_map(ranks_of([3, 0, 1, 2]), [{"ok": [1], "junk": [0, 0]}])
    assert m == pytest.approx((0 / 1 + 1 / 2) / 2)  # one junk image before it, not two


def test_trapezoid_precisions():
    # positives at positions 0 and 2: (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2
    assert compute_ap(np.array([0, 2]), 2) == pytest.approx(0.5 + 7 / 24)
    assert compute_ap(np.array([0]), 2) == pytest.approx(0.5)  # a positive never retrieved


def test_empty_queries_are_skipped_and_report_nan():
    ranks = ranks_of([0, 1, 2], [2, 1, 0])
    m, aps, _, prs = compute_map(ranks, [{"ok": []}, {"ok": [2]}], kappas=[1])
    assert m == pytest.approx(1.0)
    assert np.isnan(aps[0]) and aps[1] == 1.0 and np.isnan(prs[0, 0])


def test_precision_at_k_divides_by_last_positive_when_all_above_k():
    _, _, pr, _ = compute_map(ranks_of([7, 0, 1, 2, 3, 4, 5, 6]), [{"ok": [7, 1]}], kappas=[5])
    # 1-based positions 1 and 3: kq = min(3, 5) = 3, so P@5 = 2/3 (not 2/5)
    assert pr == pytest.approx([2 / 3])


def test_revisited_protocol_sets():
    gnd = [{"easy": [1], "hard": [2], "junk": [3]}]
    assert list(revisited_gnd(gnd, "easy")[0]["ok"]) == [1] and set(revisited_gnd(gnd, "easy")[0]["junk"]) == {2, 3}
    assert set(revisited_gnd(gnd, "medium")[0]["ok"]) == {1, 2} and list(revisited_gnd(gnd, "medium")[0]["junk"]) == [3]
    assert list(revisited_gnd(gnd, "hard")[0]["ok"]) == [2] and set(revisited_gnd(gnd, "hard")[0]["junk"]) == {1, 3}


def test_evaluate_and_format_revisited():
    ranks = ranks_of([1, 2, 0, 3], [3, 2, 1, 0])
    gnd = [{"easy": [1], "hard": [0], "junk": [2]}, {"easy": [3], "hard": [], "junk": []}]
    results = evaluate_ranks(ranks, gnd, "revisited")
    assert results["easy"]["map"] == pytest.approx(1.0)
    assert results["medium"]["map"] == pytest.approx(1.0)  # junk 2 removed: 1 then 0
    # only query 0 has a hard positive; 2 junk (2, and easy 1) above it are removed
    assert results["hard"]["map"] == pytest.approx(1.0)
    assert np.isnan(results["hard"]["aps"][1])
    lines = format_results("roxford5k", results)
    assert lines[0] == ">> roxford5k: mAP E: 100.0, M: 100.0, H: 100.0"
    assert lines[1].startswith(">> roxford5k: mP@k[1, 5, 10] E: [100. 100. 100.]")


def test_matches_a_plain_loop_on_random_rankings():
    rng = np.random.default_rng(0)
    n, q = 60, 5
    ranks = np.stack([rng.permutation(n) for _ in range(q)], axis=1)
    gnd = [{"ok": rng.choice(n, 6, replace=False), "junk": rng.choice(n, 4, replace=False)} for _ in range(q)]
    for g in gnd:
        g["junk"] = np.setdiff1d(g["junk"], g["ok"])
    m, aps, _, _ = compute_map(ranks, gnd)
    for i in range(q):
        pos = [r for r, idx in enumerate(ranks[:, i]) if idx in set(gnd[i]["ok"])]
        junk = [r for r, idx in enumerate(ranks[:, i]) if idx in set(gnd[i]["junk"])]
        adjusted = [p - sum(j < p for j in junk) for p in pos]
        ap = sum(((1.0 if r == 0 else j / r) + (j + 1) / (r + 1)) / 2 / len(gnd[i]["ok"]) for j, r in enumerate(adjusted))
        assert aps[i] == pytest.approx(ap)


def test_an_unknown_protocol_is_refused_listing_the_known_ones():
    ranks = np.array([[0], [1]])
    with pytest.raises(ConfigError, match="unknown protocol 'revisted': the known ones are revisited, classic"):
        evaluate_ranks(ranks, [{"easy": [0], "hard": [], "junk": []}], "revisted")


def test_a_level_that_is_not_one_is_named():
    """map('Hard') fell through to the classic mAP's key (a KeyError on a revisited set) or, on a
    classic set, gave its mAP for any string."""
    from aml.evaluation import Reranking
    from aml.evaluation.results import SearchResult

    revisited = SearchResult(False, Reranking(), {"medium": {"map": 0.5}, "hard": {"map": 0.25}})
    classic = SearchResult(False, Reranking(), {"map": 0.75})
    assert revisited.map("hard") == 0.25 and classic.map("all") == 0.75 and classic.map() == 0.75
    for search in (revisited, classic):
        with pytest.raises(ConfigError, match="level 'Hard': choose easy, medium or hard"):
            search.map("Hard")
    with pytest.raises(ConfigError, match="level 'all' is a classic test set's"):
        revisited.map("all")


def test_a_level_where_no_query_has_a_positive_is_undefined_not_zero():
    """A set made without 'hard' lists printed H: 0.0 for every network, as if none found anything."""
    from aml.evaluation import format_results
    from aml.evaluation.metrics import evaluate_ranks

    ranks = ranks_of([0, 1, 2], [2, 1, 0])
    m, aps, pr, _ = compute_map(ranks, [{"ok": []}, {"ok": []}], kappas=[1, 5])
    assert np.isnan(m) and np.isnan(aps).all() and np.isnan(pr).all()
    results = evaluate_ranks(ranks, [{"easy": [0], "hard": [], "junk": []}, {"easy": [2], "hard": [], "junk": []}],
                             "revisited")
    assert results["medium"]["map"] == 1.0 and np.isnan(results["hard"]["map"])
    assert format_results("mine", results)[0] == ">> mine: mAP E: 100.0, M: 100.0, H: nan"


def test_compute_map_and_print_of_cirtorch_and_of_the_original_aml(tmp_path):
    """Both originals' test.py and main.py import it; aml had no such name."""
    import io

    from aml.evaluation import compute_map_and_print, evaluate_ranks

    ranks = np.array([[3, 0], [0, 1], [1, 2], [2, 3]])
    gnd = [{"easy": [0], "hard": [2], "junk": [3]}, {"easy": [1], "hard": [3], "junk": []}]
    expected = evaluate_ranks(ranks, gnd, "revisited", (1, 5, 10))
    assert compute_map_and_print("roxford5k", ranks, gnd) == expected  # cirtorch's call
    log = io.StringIO()
    assert compute_map_and_print("roxford5k", ranks, gnd, log) == expected  # the original aml's: log 4th
    assert log.getvalue().splitlines()[0].startswith(">> roxford5k: mAP E: ")
    # ... and its kappas 5th: they were dropped for the defaults
    assert compute_map_and_print("roxford5k", ranks, gnd, log, [1, 2]) == evaluate_ranks(ranks, gnd, "revisited", (1, 2))
    assert log.getvalue().splitlines()[-1].startswith(">> roxford5k: mP@k[1, 2] E: ")
    two = evaluate_ranks(ranks, gnd, "revisited", (1, 2))
    assert compute_map_and_print("roxford5k", ranks, gnd, log, kappas=[1, 2]) == two  # was a TypeError
    assert compute_map_and_print("roxford5k", ranks, gnd, kappas=[1, 2], log_file=log) == two
    fresh = io.StringIO()
    assert compute_map_and_print("roxford5k", ranks, gnd, log=fresh, kappas=[1, 2]) == two  # the original's name
    assert fresh.getvalue().splitlines()[1].startswith(">> roxford5k: mP@k[1, 2] E: ")
    with pytest.raises(TypeError, match="got log and log_file: give one"):
        compute_map_and_print("roxford5k", ranks, gnd, log=fresh, log_file=log)
    with pytest.raises(TypeError, match="got kappas twice"):
        compute_map_and_print("roxford5k", ranks, gnd, [1], kappas=[1, 2])
    classic = compute_map_and_print("oxford5k", ranks, [{"ok": [0], "junk": [3]}, {"ok": [1], "junk": []}], [1])
    assert set(classic) == {"map", "aps"}


def test_a_ranking_with_a_negative_index_is_refused_not_read_as_the_last_image():
    """faiss fills a short result list with -1; numpy read it as the last image, which here is
    the query's positive: AP 1 for a ranking that never found it."""
    from aml.utils.errors import DataError

    with pytest.raises(DataError, match=r"ranks hold the index -1: each column must rank database images"):
        compute_map(np.array([[-1], [0], [1]]), [{"ok": [2]}])  # was AP 1: image 2 "ranked first"


def test_one_querys_ground_truth_outside_a_list_is_named():
    """evaluate_ranks(ranks, {'easy': ..., 'hard': ..., 'junk': ...}) was KeyError 0."""
    import numpy as np

    entry = {"easy": [0], "hard": [2], "junk": [3]}
    ranks = np.array([[3], [0], [1], [2]])
    with pytest.raises(ConfigError, match=r"a list of one dict per query .*got dict; put one query's dict in a list$"):
        evaluate_ranks(ranks, entry, "revisited")
    with pytest.raises(ConfigError, match=r"got list holding list$"):
        evaluate_ranks(ranks, [[0, 2]], "revisited")
    assert evaluate_ranks(ranks, (entry,), "revisited")["easy"]["map"] == 1.0
