"""Search: the full ranking, and places among a test database plus distractors searched in
blocks, which must equal the places in the full ranking of the concatenation."""

import json

import numpy as np
import pytest

from aml.evaluation.metrics import compute_maps, compute_maps_from_positions, evaluate_positions, evaluate_ranks
from aml.evaluation.ranking import nearest, positions_with_distractors, rank_database
from aml.evaluation.whitening import whitenapply, whitened_rows


def unit(rng, d, n):
    x = rng.standard_normal((d, n)).astype(np.float32)
    return x / np.linalg.norm(x, axis=0, keepdims=True)


def places(ranks):
    out = np.empty_like(ranks)
    for q in range(ranks.shape[1]):
        out[ranks[:, q], q] = np.arange(ranks.shape[0])
    return out


@pytest.mark.kernels
def test_ranking_is_by_score_with_ties_in_database_order():
    db = np.array([[1.0, 0.0, 1.0, 0.5]], dtype=np.float32)
    q = np.array([[1.0]], dtype=np.float32)
    assert rank_database(db, q)[:, 0].tolist() == [0, 2, 3, 1]
    assert rank_database(db, q, excluded=[0])[:, 0].tolist() == [2, 3, 1, 0]


@pytest.mark.parametrize("block, n_queries", [(1, 6), (7, 6), (64, 6), (1000, 6), (1, 1), (64, 1)])
def test_blocked_places_equal_the_full_ranking_of_the_concatenation(block, n_queries):
    rng = np.random.default_rng(block)
    db, distractors, queries = unit(rng, 128, 40), unit(rng, 128, 300), unit(rng, 128, n_queries)
    distractors[:, 11] = db[:, 3]  # exact ties between a distractor and a database image
    distractors[:, 12] = db[:, 3]
    full = places(rank_database(np.concatenate([db, distractors], 1), queries, excluded=[2, 40 + 20]))
    blocks = [(s, distractors[:, s:s + block].T) for s in range(0, 300, block)]
    found = positions_with_distractors(db, queries, blocks, excluded=[2], excluded_distractors=[20])
    np.testing.assert_array_equal(found, full[:40])


@pytest.mark.kernels
@pytest.mark.parametrize("n_db, n_queries", [(1, 4), (8, 4), (11, 1), (31, 4)])
def test_a_database_narrower_than_a_block_ties_its_copies_among_distractors(n_db, n_queries):
    """A test database of fewer than 12 images was scored by another BLAS order than the
    distractor blocks: a distractor copy of a database image ranked above it (46 seeds of 50)."""
    rng = np.random.default_rng(n_db)
    for _ in range(10):
        db, distractors, queries = unit(rng, 512, n_db), unit(rng, 512, 40), unit(rng, 512, n_queries)
        distractors[:, 0] = db[:, n_db // 2]
        full = places(rank_database(np.concatenate([db, distractors], 1), queries))
        found = positions_with_distractors(db, queries, [(0, distractors.T.copy())])
        np.testing.assert_array_equal(found, full[:n_db])


def test_blocked_places_apply_the_transform_to_every_block():
    rng = np.random.default_rng(0)
    db, distractors, queries = unit(rng, 6, 30), unit(rng, 6, 50), unit(rng, 6, 4)
    m, P = rng.standard_normal((6, 1)), rng.standard_normal((6, 6))
    white = lambda x: whitenapply(x, m, P)  # noqa: E731
    full = places(rank_database(white(np.concatenate([db, distractors], 1)), white(queries)))
    found = positions_with_distractors(white(db), white(queries), [(0, distractors[:, :25].T), (25, distractors[:, 25:].T)],
                                       transform=lambda rows: whitened_rows(rows, (m, P), "distractor"))
    np.testing.assert_array_equal(found, full[:30])


def test_maps_from_places_equal_maps_from_ranks():
    rng = np.random.default_rng(1)
    ranks = np.stack([rng.permutation(20) for _ in range(3)], axis=1)
    gnd = [{"ok": [1, 5], "junk": [2]}, {"ok": [7], "junk": []}, {"ok": [0, 19, 4], "junk": [3, 9]}]
    by_ranks, by_places = compute_maps(ranks, {"g": gnd}, (1, 5)), compute_maps_from_positions(places(ranks), {"g": gnd}, (1, 5))
    assert by_ranks["g"][0] == by_places["g"][0]
    np.testing.assert_array_equal(by_ranks["g"][2], by_places["g"][2])
    revisited = [{"easy": [1], "hard": [5], "junk": [2]}, {"easy": [7], "hard": [], "junk": []},
                 {"easy": [0], "hard": [19, 4], "junk": [3]}]
    assert json.dumps(evaluate_ranks(ranks, revisited, "revisited")) == json.dumps(
        evaluate_positions(places(ranks), revisited, "revisited"))


@pytest.mark.kernels
def test_descending_order_equals_a_stable_sort_with_many_ties():
    from aml.evaluation.ranking import descending_order

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(7, 200)).astype(np.float32)  # ties everywhere
    scores[0] = rng.standard_normal(200)  # and a row without ties
    scores[1, [3, 50]] = -np.inf
    expected = np.stack([np.argsort(-row, kind="stable") for row in scores])
    np.testing.assert_array_equal(descending_order(scores), expected)


@pytest.mark.kernels
def test_descending_order_puts_long_runs_of_ties_in_index_order():
    from aml.evaluation.ranking import descending_order

    scores = np.zeros((2, 9), dtype=np.float32)  # one run of 9 equal scores, and a row of two runs
    scores[1, ::2] = 1.0
    np.testing.assert_array_equal(descending_order(scores), [list(range(9)), [0, 2, 4, 6, 8, 1, 3, 5, 7]])


@pytest.mark.parametrize("where, message", [("query", "1 of the 2 query descriptors hold NaN or infinite values "
                                                      "\\(the first: query 1\\)"),
                                            ("database", "1 of the 3 database descriptors .*the first: database 2")])
def test_non_finite_queries_or_database_descriptors_are_refused_by_name(where, message):
    """A NaN query used to rank silently (its scores all NaN: the database in some order)."""
    from aml.descriptors.extraction import NonFiniteDescriptors

    database, queries = np.eye(3, dtype=np.float32), np.eye(3, 2, dtype=np.float32)
    (queries if where == "query" else database)[0, -1] = np.nan
    with pytest.raises(NonFiniteDescriptors, match=message):
        rank_database(database, queries)
    with pytest.raises(NonFiniteDescriptors, match=message):
        nearest(database, queries, 1)


def test_non_finite_distractors_are_refused_by_name():
    from aml.descriptors.extraction import NonFiniteDescriptors

    database, queries = np.eye(3, dtype=np.float32), np.eye(3, 2, dtype=np.float32)
    blocks = [(0, np.eye(4, 3, dtype=np.float32)), (4, np.full((2, 3), np.inf, dtype=np.float32))]
    with pytest.raises(NonFiniteDescriptors, match="2 of the 2 distractor descriptors .*the first: distractor 4"):
        positions_with_distractors(database, queries, blocks)


def test_excluded_distractors_that_are_none_are_refused():
    """excluded_distractors=[-1] was ignored without a word, and so was an index past the last."""
    from aml.utils.errors import ConfigError

    database, queries = np.eye(3, dtype=np.float32), np.eye(3, 2, dtype=np.float32)
    blocks = [(0, np.eye(4, 3, dtype=np.float32)), (4, np.eye(2, 3, dtype=np.float32))]
    with pytest.raises(ConfigError, match=r"excluded_distractors holds -1, not a distractor's index"):
        positions_with_distractors(database, queries, blocks, excluded_distractors=[-1])
    with pytest.raises(ConfigError, match=r"excluded_distractors holds 6, past the last of the 6 distractors"):
        positions_with_distractors(database, queries, blocks, excluded_distractors=[2, 6])
    kept = positions_with_distractors(database, queries, blocks, excluded_distractors=np.array([0, 5]))
    assert kept.shape == (3, 2)


@pytest.mark.parametrize("k", [1, 3, 40, 199, 200, 300])
def test_top_in_order_is_the_first_columns_of_a_stable_sort(k):
    """Without sorting whole rows: ties inside and across the k-th score, -inf, k past N."""
    import torch

    from aml.evaluation.ranking import top_in_order

    rng = np.random.default_rng(4)
    scores = rng.integers(0, 5, size=(7, 200)).astype(np.float32)  # ties everywhere
    scores[0] = rng.standard_normal(200)  # a row without ties
    scores[1, [3, 50]] = -np.inf
    scores[2] = -np.inf  # a row of excluded images only
    scores[2, 7] = 1.0
    expected = np.stack([np.argsort(-row, kind="stable") for row in scores])[:, :k]
    np.testing.assert_array_equal(top_in_order(torch.from_numpy(scores), k).numpy(), expected)
    assert top_in_order(torch.zeros(0, 200), k).shape == (0, min(k, 200))  # no query


def test_nearest_takes_no_more_scores_at_once_than_its_bound(monkeypatch):
    import aml.evaluation.ranking as ranking

    rng = np.random.default_rng(5)
    database = unit(rng, 8, 30)
    database[:, 7] = database[:, 4]  # a tie
    queries = unit(rng, 8, 11)
    taken = []
    scored = ranking._scored
    monkeypatch.setattr(ranking, "_scored", lambda db, q, excluded: taken.append(q.shape[1]) or scored(db, q, excluded))
    monkeypatch.setattr(ranking, "SCORE_VALUES", 90)  # 3 queries of 30 scores
    expected = rank_database(database, queries, excluded=[2])[:5]
    taken.clear()
    np.testing.assert_array_equal(nearest(database, queries, 5, excluded=[2]), expected)
    assert taken == [2, 3, 3, 3]  # even parts of at most 3
    alone = rank_database(database, database)  # DBA's search: each image's column never lists itself
    by_chunks = nearest(database, database, 4, skip_self=True)
    for i in range(30):
        assert by_chunks[:, i].tolist() == [j for j in alone[:, i] if j != i][:4]


def test_descriptors_given_as_rows_are_refused_not_ranked():
    """N x D descriptors (numpy's habit) were ranked as D x N: a 16 x 16 "ranking" of 60 images,
    without a word; one side transposed was torch's shape error."""
    from aml.utils.errors import ConfigError

    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 60))
    X /= np.linalg.norm(X, axis=0)
    assert rank_database(X, X[:, :5]).shape == (60, 5)
    with pytest.raises(ConfigError, match=r"60 x 16 query descriptors whose rows are unit vectors and columns are not"):
        rank_database(X.T, X.T)
    with pytest.raises(ConfigError, match=r"the database is 16 x 60 and the queries 60 x 16: descriptors are D x N"):
        rank_database(X, X.T)


def test_a_ranking_of_another_shape_than_the_ground_truth_is_refused():
    """Q x N_db ranks (numpy's argsort of Q x N scores) were an IndexError, fewer columns than
    queries scored some and dropped the rest, float ranks a numpy error, and a classic ground
    truth under the revisited protocol gave NaN everywhere."""
    from aml.utils.errors import DataError

    ranks = np.tile(np.arange(30)[:, None], (1, 5))
    gnd = [{"ok": [i], "junk": []} for i in range(5)]
    with pytest.raises(DataError, match=r"ranks of shape \(5, 30\) rank 30 queries .* pass them transposed \(.T\)"):
        compute_maps(ranks.T, {"g": gnd})
    with pytest.raises(DataError, match=r"rank 2 queries \(columns\) and the ground truth has 5"):
        compute_maps(ranks[:, :2], {"g": gnd})
    with pytest.raises(DataError, match=r"integers, one column per query; got float64"):
        compute_maps(ranks.astype(float), {"g": gnd})
    with pytest.raises(DataError, match=r"has \['junk', 'ok'\], not easy and hard: .* protocol='classic'"):
        evaluate_ranks(ranks, gnd, "revisited")
    with pytest.raises(DataError, match=r"not ok: the classic protocol .* protocol='revisited'"):
        evaluate_ranks(ranks, [{"easy": [1], "hard": [], "junk": []}] * 5, "classic")
    with pytest.raises(DataError, match=r"not easy and hard: the revisited protocol needs them$"):  # no 'ok' either
        evaluate_ranks(ranks, [{"easy": [1], "junk": []}] * 5, "revisited")
    assert evaluate_ranks(ranks, gnd, "classic")["map"] > 0


def test_the_mask_of_top_in_order_is_counted_a_slice_at_a_time(monkeypatch):
    """Summed whole, torch made it an int64 copy of the scores: 3.25 GiB for a 1 GiB step."""
    import torch

    from aml.evaluation import ranking

    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(6, 50)).astype(np.float32)
    expected = np.stack([np.argsort(-row, kind="stable") for row in scores])[:, :7]
    monkeypatch.setattr(ranking, "COUNTED_COLUMNS", 8)
    np.testing.assert_array_equal(ranking.top_in_order(torch.from_numpy(scores), 7).numpy(), expected)


def test_long_runs_of_equal_scores_are_put_in_index_order_at_once():
    """Odd-even transposition took a pass per place of a run: 196 s for runs of 16,000 ties."""
    from aml.evaluation.ranking import descending_order

    rng = np.random.default_rng(6)
    scores = rng.standard_normal((3, 30000)).astype(np.float32)
    scores[:, 5000:25000] = 0.25  # 20,000 duplicates of one image
    scores[1, ::7] = -np.inf  # skipped images, all tied last
    scores[2, 100:110] = scores[2, 40]  # a short run beside the long one
    expected = np.stack([np.argsort(-row, kind="stable") for row in scores])
    np.testing.assert_array_equal(descending_order(scores), expected)


@pytest.mark.kernels
@pytest.mark.parametrize("n_queries", [1, 2, 5])
def test_scores_do_not_depend_on_the_layout_of_the_descriptors(n_queries):
    """A store's D x N descriptors are a view of rows: one query scored against them by BLAS's
    gemv rounded otherwise than against a contiguous copy (96% of its scores), so a search and
    the evaluation's ranking put near-ties apart; on an Intel Xeon (MKL), ``queries.T @ rows.T``
    rounded otherwise than ``queries.T @ columns`` for 2 to 5 queries too, on one thread, and
    otherwise at each block width."""
    import torch

    from aml.evaluation.ranking import padded_products

    rng = np.random.default_rng(n_queries)
    rows = rng.standard_normal((300, 512)).astype(np.float32)
    queries = rng.standard_normal((512, n_queries)).astype(np.float32)
    as_columns = padded_products(torch.from_numpy(queries), torch.from_numpy(np.ascontiguousarray(rows.T)).t())
    for layout in (queries, np.ascontiguousarray(queries.T).T):  # a search's queries are a view of rows
        assert torch.equal(padded_products(torch.from_numpy(layout), torch.from_numpy(rows)), as_columns)
        blocks = [padded_products(torch.from_numpy(layout), torch.from_numpy(rows[a:b])) for a, b in
                  ((0, 70), (70, 75), (75, 300))]  # a store's shards, one narrow
        assert torch.equal(torch.cat(blocks, dim=1), as_columns)
