"""SuperGlobal's re-ranking: exact small numbers from the paper's formulas, the formulas written
out one image at a time on random descriptors, and the re-ranked shortlist turned into a test's
places and a store's top k."""

import numpy as np
import pytest

from aml.evaluation.superglobal import (PAPER_BETA, PAPER_K, PAPER_M, Shortlist, SuperGlobal, augmented_descriptors,
                                        superglobal_rerank, superglobal_scores, superglobal_shortlist)
from aml.utils.errors import ConfigError, DataError

A, B, C = np.array([1.0, 0.0]), np.array([0.8, 0.6]), np.array([0.0, 1.0])  # cos(A,B) .8, cos(B,C) .6, cos(A,C) 0
Q = np.array([0.7, 0.714])


def test_each_descriptor_is_averaged_with_its_nearest_neighbours_weighted_by_beta_times_similarity():
    # A's nearest other is B (0.8): (A + 1 * 0.8 B) / 1.8; C's is B (0.6): (C + 0.6 B) / 1.6
    out = augmented_descriptors(np.stack([A, B, C]), k=1, beta=1.0)
    assert np.allclose(out, [[1.64 / 1.8, 0.48 / 1.8], [1.6 / 1.8, 0.6 / 1.8], [0.48 / 1.6, 1.36 / 1.6]])
    # beta 0.5 and two neighbours for B: (B + 0.4 A + 0.3 C) / 1.7
    assert np.allclose(augmented_descriptors(np.stack([A, B, C]), k=2, beta=0.5)[1], (B + 0.4 * A + 0.3 * C) / 1.7)
    assert np.array_equal(augmented_descriptors(np.stack([A, B]), k=0, beta=1.0), np.stack([A, B]))


def test_a_neighbour_pointing_away_weighs_nothing():
    out = augmented_descriptors(np.stack([A, -A]), k=1, beta=1.0)
    assert np.array_equal(out, np.stack([A, -A]))


def test_the_final_score_averages_the_query_and_the_maximum_of_the_leaders():
    augmented = np.array([[0.3, 0.85], [1.6 / 1.8, 0.6 / 1.8], [1.64 / 1.8, 0.48 / 1.8]])  # C', B', A'
    first = augmented @ Q
    expanded = np.maximum(augmented[1], augmented[2])  # the k + 1 = 2 leaders by first score: B', A'
    expected = (first + augmented @ expanded) / 2
    assert np.allclose(superglobal_scores(np.stack([C, B, A]), Q, k=1, beta=1.0), expected)
    assert np.allclose(expected, [0.68679, 0.89059, 0.87361], atol=1e-5)


def test_the_top_m_are_reordered_and_the_rest_keep_their_places():
    database = np.stack([A, B, C, np.array([0.6, -0.8])], axis=1)  # D x N
    ranks = np.array([[2, 2], [1, 1], [0, 3], [3, 0]])
    out = superglobal_rerank(database, np.stack([Q, Q], axis=1), ranks, SuperGlobal(m=3, k=1, beta=1.0))
    assert out[:, 0].tolist() == [1, 0, 2, 3]  # A, close to B, passes C; the fourth stays
    assert out[3, 1] == 0 and sorted(out[:3, 1].tolist()) == [1, 2, 3]
    assert ranks[:, 0].tolist() == [2, 1, 0, 3]  # the input is left as it was
    assert np.array_equal(superglobal_rerank(database, Q[:, None], ranks[:, :1], SuperGlobal(m=1)), ranks[:, :1])


def test_the_paper_values_are_the_defaults_and_bad_settings_or_inputs_are_refused():
    assert (SuperGlobal().m, SuperGlobal().k, SuperGlobal().beta) == (PAPER_M, PAPER_K, PAPER_BETA) == (400, 9, 0.15)
    assert SuperGlobal().label() == "sg400" and SuperGlobal(50, 3, 0.5).label() == "sg50(k=3,β=0.5)"
    assert SuperGlobal(m=7, beta=0.3).label() == "sg7(β=0.3)"
    assert SuperGlobal(k=0).label() == "sg400(k=0)"  # the query's own result alone expands it
    with pytest.raises(ConfigError, match=r"^SuperGlobal.beta=0.3 with k=0: no neighbour is weighed; give k >= 1$"):
        SuperGlobal(k=0, beta=0.3)  # beta weighs the neighbours, and there are none
    for bad in (dict(m=-1), dict(m=0), dict(k=1.5), dict(k=-1), dict(beta=float("nan")), dict(beta=-0.1),
                dict(m=True)):
        with pytest.raises(ConfigError, match="SuperGlobal"):
            SuperGlobal(**bad)
    database = np.stack([A, B], axis=1)
    with pytest.raises(DataError, match="the database is 2 x 2 and the queries 3 x 1"):
        superglobal_rerank(database, np.zeros((3, 1)), np.array([[0], [1]]))
    with pytest.raises(DataError, match="query descriptors hold NaN"):
        superglobal_rerank(database, np.full((2, 1), np.nan), np.array([[0], [1]]))


def written_out(x, q, k, beta):
    """The two steps one image at a time: each image averaged with its k most similar others
    (weights beta * similarity, itself 1), the query's similarity to the result, the maximum of
    the k + 1 first by it as a second query, the mean of both similarities."""
    augmented = []
    for i in range(len(x)):
        others = sorted((j for j in range(len(x)) if j != i), key=lambda j: -(x[i] @ x[j]))[:k]
        weights = [beta * max(x[i] @ x[j], 0.0) for j in others]
        augmented.append((x[i] + sum(w * x[j] for w, j in zip(weights, others))) / (1 + sum(weights)))
    first = [q @ a for a in augmented]
    expanded = np.max([augmented[i] for i in sorted(range(len(x)), key=lambda i: -first[i])[:k + 1]], axis=0)
    return [(first[i] + expanded @ augmented[i]) / 2 for i in range(len(x))]


@pytest.mark.parametrize("k, beta", [(PAPER_K, PAPER_BETA), (1, 1.0), (4, 0.5), (0, 0.15), (40, 0.15)])
def test_the_scores_equal_the_formulas_written_out_one_image_at_a_time(k, beta):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((30, 8)) + 2 * rng.standard_normal(8)  # related images: most similarities positive
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[0] + 0.3 * rng.standard_normal(8)
    q /= np.linalg.norm(q)
    np.testing.assert_allclose(superglobal_scores(x, q, k, beta), written_out(x, q, k, beta), rtol=1e-12)


def test_a_shortlist_is_reordered_by_its_scores_and_missing_results_stay_last():
    top = np.stack([np.stack([C, B, A]).T, np.stack([A, B, np.zeros(2)]).T], axis=2)  # D x M x Q
    shortlist = superglobal_shortlist(np.array([[2, 0], [1, 1], [0, -1]]), top, np.stack([Q, Q], axis=1),
                                      SuperGlobal(m=3, k=1, beta=1.0))
    assert shortlist.indices[:, 0].tolist() == [1, 0, 2]  # B, A, C: the scores of the test above
    np.testing.assert_allclose(shortlist.scores[:, 0], superglobal_scores(np.stack([C, B, A]), Q, 1, 1.0)[[1, 2, 0]])
    alone = superglobal_scores(np.stack([A, B]), Q, k=1, beta=1.0)  # the second query has two results
    order = np.argsort(-alone, kind="stable")
    assert shortlist.indices[:, 1].tolist() == [[0, 1][i] for i in order] + [-1]
    np.testing.assert_allclose(shortlist.scores[:2, 1], alone[order])
    assert shortlist.scores[2, 1] == -np.inf


def test_a_shortlist_gives_a_test_its_places():
    # query 0 ranked test images and distractors 2, d5, 0, 1, 3; SuperGlobal put 0, 2, d5 first
    # query 1 ranked 1, 3, 0, 2 and its shortlist holds two results: 3, 1
    places = np.array([[2, 2], [3, 0], [0, 3], [4, 1]])  # N x Q places of the 4 test images
    shortlist = Shortlist(np.array([[0, 3], [2, 1], [5, -1]]), np.zeros((3, 2)))
    assert shortlist.places(places).tolist() == [[0, 2], [3, 1], [1, 3], [4, 0]]
    assert places.tolist() == [[2, 2], [3, 0], [0, 3], [4, 1]]  # left as it was


def test_a_shortlist_goes_in_front_of_a_stores_top_k():
    shortlist = Shortlist(np.array([[0, 3], [2, 1], [5, -1]]), np.array([[0.95, 0.7], [0.9, 0.6], [0.85, -np.inf]]))
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.8, 0.75, 0.5, 0.0]])
    indices = np.array([[2, 5, 0, 1], [1, 3, 0, -1]])
    out_scores, out_indices = shortlist.ahead_of(scores, indices)
    assert out_indices.tolist() == [[0, 2, 5, 1], [3, 1, 0, -1]]
    assert out_scores.tolist() == [[0.95, 0.9, 0.85, 0.6], [0.7, 0.6, 0.5, -np.inf]]
    out_scores, out_indices = shortlist.ahead_of(scores[:, :2], indices[:, :2])
    assert out_indices.tolist() == [[0, 2], [3, 1]] and out_scores.tolist() == [[0.95, 0.9], [0.7, 0.6]]
