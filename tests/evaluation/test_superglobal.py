"""SuperGlobal's re-ranking: exact small numbers from the paper's formulas."""

import numpy as np
import pytest

from aml.evaluation.superglobal import (PAPER_BETA, PAPER_K, PAPER_M, SuperGlobal, augmented_descriptors,
                                        superglobal_rerank, superglobal_scores)

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
    for bad in (dict(m=-1), dict(k=1.5), dict(beta=float("nan")), dict(beta=-0.1), dict(m=True)):
        with pytest.raises(ValueError, match="SuperGlobal"):
            SuperGlobal(**bad)
    database = np.stack([A, B], axis=1)
    with pytest.raises(ValueError, match="disagree"):
        superglobal_rerank(database, np.zeros((3, 1)), np.array([[0], [1]]))
    with pytest.raises(ValueError, match="query descriptors hold NaN"):
        superglobal_rerank(database, np.full((2, 1), np.nan), np.array([[0], [1]]))
