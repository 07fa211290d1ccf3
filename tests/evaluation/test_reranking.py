"""Re-ranking: αQE and DBA against hand-computed sums (2-4 descriptors in 2-3 dimensions),
the neighbours' order with ties and exclusions, and the blocked top-k over distractor blocks
equal to the first rows of the full ranking of the concatenation."""

import math

import numpy as np
import pytest
import torch

from aml.evaluation.database import Distractors, TestDatabase
from aml.evaluation.reranking import (Reranking, alpha_query_expansion, database_augmentation, search_with_expansion,
                                      weighted_expansion)
from aml.evaluation.results import SearchResult
from aml.evaluation.superglobal import SuperGlobal, superglobal_rerank
from aml.evaluation.ranking import nearest, nearest_with_distractors, rank_database
from aml.evaluation.whitening import whitenapply, whitened_rows
from aml.utils.errors import ConfigError, DataError

# three 2-d database descriptors and a query: similarities 0.8 (a), 0.6 (b), 0.96 (c)
A, B, C = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8)
DATABASE = np.array([A, B, C], dtype=np.float32).T
QUERY = np.array([[0.8], [0.6]], dtype=np.float32)


def unit(*values):
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def column(x):
    return x[:, 0].tolist()


def test_alpha_query_expansion_weighs_the_neighbours_by_their_similarity_cubed():
    ranks = rank_database(DATABASE, QUERY)
    assert ranks[:, 0].tolist() == [2, 0, 1]
    # q + 0.96^3 c + 0.8^3 a
    expected = unit(0.8 + 0.884736 * 0.6 + 0.512 * 1.0, 0.6 + 0.884736 * 0.8 + 0.512 * 0.0)
    assert column(alpha_query_expansion(QUERY, DATABASE, ranks, k=2, alpha=3)) == pytest.approx(expected, abs=1e-6)


def test_alpha_zero_is_the_plain_average_and_k_one_takes_the_best_neighbour_only():
    ranks = rank_database(DATABASE, QUERY)
    # q + c + a, each with weight 1
    assert column(alpha_query_expansion(QUERY, DATABASE, ranks, k=2, alpha=0)) == pytest.approx(
        unit(0.8 + 0.6 + 1.0, 0.6 + 0.8 + 0.0), abs=1e-6)
    # k = 1: q + 0.96^2 c (alpha 2)
    assert column(alpha_query_expansion(QUERY, DATABASE, ranks, k=1, alpha=2)) == pytest.approx(
        unit(0.8 + 0.9216 * 0.6, 0.6 + 0.9216 * 0.8), abs=1e-6)
    # all three, alpha 1: q + 0.96 c + 0.8 a + 0.6 b
    assert column(alpha_query_expansion(QUERY, DATABASE, ranks, k=3, alpha=1)) == pytest.approx(
        unit(0.8 + 0.96 * 0.6 + 0.8, 0.6 + 0.96 * 0.8 + 0.6), abs=1e-6)


def test_queries_are_expanded_each_with_its_own_neighbours():
    queries = np.array([[0.8, 0.0], [0.6, 1.0]], dtype=np.float32)  # the second is b itself
    ranks = rank_database(DATABASE, queries)
    assert ranks[:, 1].tolist() == [1, 2, 0]  # b (1), c (0.8), a (0)
    expanded = alpha_query_expansion(queries, DATABASE, ranks, k=2, alpha=1)
    assert expanded[:, 0].tolist() == pytest.approx(unit(0.8 + 0.96 * 0.6 + 0.8, 0.6 + 0.96 * 0.8), abs=1e-6)
    assert expanded[:, 1].tolist() == pytest.approx(unit(0.0 + 0.0 + 0.8 * 0.6, 1.0 + 1.0 + 0.8 * 0.8), abs=1e-6)
    for q in range(2):  # batched equals one at a time
        alone = alpha_query_expansion(queries[:, q:q + 1], DATABASE, ranks[:, q:q + 1], k=2, alpha=1)
        np.testing.assert_array_equal(alone[:, 0], expanded[:, q])


def test_a_tie_takes_the_lower_database_index():
    database = np.array([[0.6, 0.6, 0.0], [0.8, 0.0, 0.0], [0.0, 0.8, 1.0]], dtype=np.float32)
    query = np.array([[1.0], [0.0], [0.0]], dtype=np.float32)  # similarity 0.6 to images 0 and 1
    ranks = rank_database(database, query)
    assert ranks[:2, 0].tolist() == [0, 1]
    # q + 0.6^3 (0.6, 0.8, 0): image 0, not image 1
    expected = unit(1.0 + 0.216 * 0.6, 0.216 * 0.8, 0.0)
    assert column(alpha_query_expansion(query, database, ranks, k=1, alpha=3)) == pytest.approx(expected, abs=1e-6)


def test_negative_similarities_weigh_nothing_unless_alpha_is_zero():
    query = np.array([[1.0], [0.0]], dtype=np.float32)
    away = np.array([[[-0.6]], [[0.8]]], dtype=np.float32)  # similarity -0.6
    assert column(weighted_expansion(query, away, alpha=3)) == pytest.approx([1.0, 0.0], abs=1e-7)
    assert column(weighted_expansion(query, away, alpha=1.5)) == pytest.approx([1.0, 0.0], abs=1e-7)
    assert column(weighted_expansion(query, away, alpha=0)) == pytest.approx(unit(0.4, 0.8), abs=1e-6)


def test_dba_of_three_descriptors():
    # a's nearest other image is c (0.6), b's is c (0.8), c's is b (0.8)
    augmented = database_augmentation(DATABASE, k=1, alpha=1)
    assert augmented[:, 0].tolist() == pytest.approx(unit(1.0 + 0.6 * 0.6, 0.6 * 0.8), abs=1e-6)
    assert augmented[:, 1].tolist() == pytest.approx(unit(0.8 * 0.6, 1.0 + 0.8 * 0.8), abs=1e-6)
    assert augmented[:, 2].tolist() == pytest.approx(unit(0.6, 0.8 + 0.8), abs=1e-6)
    # k = 2, alpha 0: every image plus both others
    everything = database_augmentation(DATABASE, k=2, alpha=0)
    assert everything[:, 0].tolist() == pytest.approx(unit(1.6, 1.8), abs=1e-6)
    np.testing.assert_allclose(everything, everything[:, :1].repeat(3, axis=1), atol=1e-6)


def test_dba_with_k_zero_is_the_identity():
    out = database_augmentation(DATABASE, k=0)
    np.testing.assert_array_equal(out, DATABASE)
    assert out is not DATABASE


def test_dba_never_takes_an_image_as_its_own_neighbour_even_beside_a_copy():
    database = np.array([A, A, C], dtype=np.float32).T  # images 0 and 1 are equal
    assert nearest(database, database, 1, skip_self=True)[0].tolist() == [1, 0, 0]
    augmented = database_augmentation(database, k=1, alpha=3)
    assert augmented[:, 0].tolist() == pytest.approx([1.0, 0.0], abs=1e-7)  # (a + 1 a) / 2
    assert augmented[:, 2].tolist() == pytest.approx(unit(0.6 + 0.216, 0.8), abs=1e-6)  # c + 0.6^3 a (the first a)


def test_dba_leaves_excluded_images_out():
    database = np.array([A, B, C, (0.8, 0.6)], dtype=np.float32).T
    augmented = database_augmentation(database, k=1, alpha=1, excluded=[2])
    np.testing.assert_array_equal(augmented[:, 2], database[:, 2])  # unchanged
    # a's nearest other image would be c (0.6) but c is excluded: (0.8, 0.6) (0.8)
    assert augmented[:, 0].tolist() == pytest.approx(unit(1.0 + 0.8 * 0.8, 0.8 * 0.6), abs=1e-6)
    assert augmented[:, 1].tolist() == pytest.approx(unit(0.6 * 0.8, 1.0 + 0.6 * 0.6), abs=1e-6)


def test_dba_with_as_many_neighbours_as_readable_images_is_refused():
    """k counted the unreadable images: with k = 3 of 5 images, 2 excluded, image 0 took itself
    (the excluded and itself all scored -inf, and the tie went to the lowest index)."""
    database = np.array([A, B, C, (0.8, 0.6), (0.6, 0.8)], dtype=np.float32).T
    assert database_augmentation(database, k=2, alpha=1, excluded=[3, 4]).shape == (2, 5)
    with pytest.raises(ConfigError, match=r"DBA with k=3: the database holds 3 images \(2 could not be read\), so "
                                          r"each has at most 2 neighbours"):
        database_augmentation(database, k=3, alpha=1, excluded=[3, 4])


def test_nearest_is_the_first_rows_of_the_ranking_in_chunks(monkeypatch):
    import aml.evaluation.ranking as ranking

    rng = np.random.default_rng(3)
    database = rng.standard_normal((8, 30)).astype(np.float32)
    database[:, 7] = database[:, 4]  # a tie
    queries = rng.standard_normal((8, 11)).astype(np.float32)
    monkeypatch.setattr(ranking, "NEIGHBOUR_CHUNK", 4)
    np.testing.assert_array_equal(nearest(database, queries, 5, excluded=[2]),
                                  rank_database(database, queries, excluded=[2])[:5])


def test_bad_neighbour_counts_are_refused():
    ranks = rank_database(DATABASE, QUERY)
    with pytest.raises(ValueError, match="αQE with k=4: the ranking holds 3 database images per query"):
        alpha_query_expansion(QUERY, DATABASE, ranks, k=4)
    with pytest.raises(ValueError, match="DBA with k=3: the database holds 3 images, so each has at most 2"):
        database_augmentation(DATABASE, k=3)


def test_rankings_and_descriptors_of_other_shapes_are_refused_not_expanded():
    """A transposed ranking of as many queries as images was used without a word (other
    neighbours), otherwise numpy's broadcast error; descriptors as rows were augmented as if
    they were columns."""
    rng = np.random.default_rng(0)
    database = rng.normal(size=(8, 5)).astype(np.float32)
    database /= np.linalg.norm(database, axis=0)
    queries = database[:, :3] + 0.1
    ranks = rank_database(database, queries)  # 5 x 3
    with pytest.raises(ConfigError, match=r"αQE: the ranking is 3 x 5 for 3 queries: it is k x Q.*transposed \(\.T\)"):
        alpha_query_expansion(queries, database, ranks.T, k=2)
    with pytest.raises(ConfigError, match=r"αQE: the ranking holds float64 values, not database indices"):
        alpha_query_expansion(queries, database, ranks.astype(float), k=2)
    with pytest.raises(ConfigError, match=r"αQE: the ranking holds index 5, outside the database's 5 images"):
        alpha_query_expansion(queries, database, ranks + 1, k=2)
    with pytest.raises(ConfigError, match=r"the database is 8 x 5 and the queries 4 x 3"):
        alpha_query_expansion(queries[:4], database, ranks, k=2)
    with pytest.raises(ConfigError, match=r"5 x 8 database descriptors whose rows are unit vectors and columns are not"):
        database_augmentation(database.T, k=1)
    with pytest.raises(DataError, match=r"SuperGlobal: the ranking holds index -1, outside"):
        superglobal_rerank(database, queries, ranks - 1)
    with pytest.raises(DataError, match=r"SuperGlobal: the ranking holds float64 values"):
        superglobal_rerank(database, queries, ranks.astype(float))


def test_numpy_numbers_are_taken_as_the_floats_results_record():
    assert Reranking(qe=2, qe_alpha=np.float32(3.0)).qe_alpha == 3.0
    assert type(Reranking(dba=2, dba_alpha=np.float64(0.5)).dba_alpha) is float
    assert type(SuperGlobal(beta=np.float32(0.25)).beta) is float


def _result_keys(reranking: Reranking, whitened: bool) -> list:
    """The results entries a test adds after the plain or whitened first search."""
    return [SearchResult(whitened, stage, {}).key for stage in reranking.stages()]


def test_reranking_settings_name_what_runs_and_refuse_bad_values():
    assert not Reranking().active and Reranking().label() == "" and _result_keys(Reranking(), False) == []
    both = Reranking(qe=2, dba=10, dba_alpha=0.5)
    assert both.active and both.label() == "dba10(α=0.5) + αqe2"
    assert _result_keys(both, True) == ["whiten + dba10(α=0.5)", "whiten + dba10(α=0.5) + αqe2"]
    assert _result_keys(Reranking(qe=1), False) == ["plain + αqe1"]
    assert Reranking(dba=0, dba_alpha=3.0, qe_alpha=3).label() == ""  # the defaults named are no change
    for bad, message in [(dict(qe=-1), "Reranking.qe must be an integer >= 0"),
                         (dict(dba=1.5), "Reranking.dba must be an integer >= 0"),
                         (dict(qe_alpha=-1.0), "Reranking.qe_alpha must be a finite number >= 0"),
                         (dict(dba_alpha=float("nan")), "Reranking.dba_alpha must be a finite number >= 0"),
                         # an alpha without its K, as --qe-alpha without --qe: no step would use it
                         (dict(qe_alpha=1.0), r"^Reranking.qe_alpha=1 with qe=0: no step uses it; give qe K too$"),
                         (dict(qe=2, dba_alpha=0.5), r"^Reranking.dba_alpha=0.5 with dba=0: no step uses it")]:
        with pytest.raises(ValueError, match=message):
            Reranking(**bad)


def test_superglobal_comes_last_in_the_names_and_the_stages():
    every = Reranking(qe=2, dba=10, superglobal=SuperGlobal(m=50, k=3))
    assert every.label() == "dba10 + αqe2 + sg50(k=3)"
    assert _result_keys(every, False) == ["plain + dba10", "plain + dba10 + αqe2", "plain + dba10 + αqe2 + sg50(k=3)"]
    assert every.stages() == [Reranking(dba=10), Reranking(qe=2, dba=10), every]
    alone = Reranking(superglobal=SuperGlobal())
    assert alone.active and _result_keys(alone, True) == ["whiten + sg400"] and alone.stages() == [alone]
    assert Reranking(qe=2, qe_alpha=0).stages() == [Reranking(qe=2, qe_alpha=0)]  # as before SuperGlobal
    with pytest.raises(ValueError, match="Reranking.superglobal must be a SuperGlobal or None, got 400"):
        Reranking(superglobal=400)


def places_of(ranks, n):
    """N x Q places of the first n images in each column's ranking."""
    return np.argsort(ranks, axis=0, kind="stable")[:n]


def test_superglobal_after_query_expansion_over_distractor_blocks_equals_it_over_the_concatenation():
    """The test's path: αQE and SuperGlobal's first M from the blocked search (database, then
    distractor blocks, unreadable images of both left out), places of the test images with the
    shortlist in front; equal to superglobal_rerank of the full ranking of the concatenation.
    M beyond the readable images re-ranks all of them, and the unreadable ones stay last."""
    rng = np.random.default_rng(3)
    db, distractors, queries = unit_columns(rng, 16, 40), unit_columns(rng, 16, 300), unit_columns(rng, 16, 6)
    blocks = lambda: iter([(s, distractors[:, s:s + 64].T) for s in range(0, 300, 64)])  # noqa: E731
    database = TestDatabase(db, excluded=[2], distractors=Distractors(blocks, 300, skipped=[20]))
    assert database.searchable == 40 - 1 + 300 - 1
    concatenation, excluded = np.concatenate([db, distractors], 1), [2, 40 + 20]
    expanded = alpha_query_expansion(queries, concatenation, rank_database(concatenation, queries, excluded=excluded), 3)
    for m in (25, 1000):
        settings = SuperGlobal(m=m, k=4)
        found = search_with_expansion(database, queries, Reranking(qe=3, superglobal=settings),
                                      lambda q, shortlist: shortlist.places(database.positions(q)) if shortlist
                                      else database.positions(q))
        assert len(found) == 3  # the first search, the expanded one, SuperGlobal's
        ranks = rank_database(concatenation, expanded, excluded=excluded)
        np.testing.assert_array_equal(found[1], places_of(ranks, 40))
        reranked = superglobal_rerank(concatenation, expanded, ranks, SuperGlobal(min(m, 338), k=4))
        np.testing.assert_array_equal(found[2], places_of(reranked, 40))
        assert (found[2] != found[1]).any() and (reranked[:25] >= 40).any()  # distractors among the first M
        assert (found[2][2] == 338).all() and (reranked[-2:].T == [2, 60]).all()  # the unreadable ones last


def test_a_store_asks_only_for_the_last_result():
    database = TestDatabase(DATABASE)
    calls = []
    search = lambda q, shortlist: calls.append(shortlist) or len(calls)  # noqa: E731
    reranking = Reranking(qe=1, superglobal=SuperGlobal(m=3, k=1))
    assert search_with_expansion(database, QUERY, reranking, search, first=False, expanded=False) == [1]
    assert calls[0].indices.shape == (3, 1)
    assert search_with_expansion(database, QUERY, reranking, search, first=False) == [2, 3]
    assert search_with_expansion(database, QUERY, Reranking(), search, first=False, expanded=False) == [4]


def unit_columns(rng, d, n):
    x = rng.standard_normal((d, n)).astype(np.float32)
    return x / np.linalg.norm(x, axis=0, keepdims=True)


@pytest.mark.kernels
@pytest.mark.parametrize("block, k", [(1, 3), (7, 5), (64, 5), (1000, 1), (64, 50)])
def test_blocked_top_k_equals_the_first_rows_of_the_full_ranking(block, k):
    rng = np.random.default_rng(block + k)
    db, distractors, queries = unit_columns(rng, 128, 40), unit_columns(rng, 128, 300), unit_columns(rng, 128, 6)
    distractors[:, 11] = db[:, 3]  # exact ties between distractors and a database image
    distractors[:, 12] = db[:, 3]
    queries[:, 0] = db[:, 3]  # ...at the top of the first query's ranking
    concatenation = np.concatenate([db, distractors], 1)
    full = rank_database(concatenation, queries, excluded=[2, 40 + 20])[:k]
    blocks = [(s, distractors[:, s:s + block].T) for s in range(0, 300, block)]
    indices, vectors = nearest_with_distractors(db, queries, k, blocks, excluded=[2], excluded_distractors=[20])
    np.testing.assert_array_equal(indices, full)
    assert full[:3, 0].tolist()[:min(k, 3)] == [3, 51, 52][:min(k, 3)]  # the database image first, then by index
    np.testing.assert_array_equal(vectors, concatenation[:, full])
    np.testing.assert_array_equal(weighted_expansion(queries, vectors, 3),
                                  alpha_query_expansion(queries, concatenation, full, k, 3))


def test_blocked_top_k_applies_the_transform_to_every_block():
    rng = np.random.default_rng(0)
    db, distractors, queries = unit_columns(rng, 6, 30), unit_columns(rng, 6, 50), unit_columns(rng, 6, 4)
    distractors = distractors.astype(np.float16).astype(np.float32)  # as the float16 blocks hold them
    m, P = rng.standard_normal((6, 1)), rng.standard_normal((6, 6))
    white = lambda x: whitenapply(x, m, P)  # noqa: E731
    concatenation = white(np.concatenate([db, distractors], 1)).astype(np.float32)
    blocks = [(s, distractors[:, s:s + 16].T.astype(np.float16)) for s in range(0, 50, 16)]
    indices, vectors = nearest_with_distractors(white(db), white(queries), 4, blocks,
                                                transform=lambda rows: whitened_rows(rows, (m, P), "distractor"))
    expected = rank_database(concatenation, white(queries))[:4]
    np.testing.assert_array_equal(indices, expected)
    assert (indices >= 30).any()  # distractors among the neighbours
    np.testing.assert_allclose(vectors, concatenation[:, expected], atol=1e-6)


def test_expansions_gather_their_neighbours_by_bounded_chunks(monkeypatch):
    """DBA with k up to N - 1 (and αQE with k up to N) gathered D x k x N descriptors at once;
    now a chunk of columns at a time, within the bound, with the same results."""
    from aml.evaluation import ranking as search, reranking

    rng = np.random.default_rng(0)
    database, queries = unit_columns(rng, 16, 40), unit_columns(rng, 16, 9)
    ranks = rank_database(database, queries)
    whole = (database_augmentation(database, 39, alpha=1), alpha_query_expansion(queries, database, ranks, 40))
    held = []
    real = reranking._expand
    monkeypatch.setattr(reranking, "_expand", lambda v, n, a: held.append(n.size) or real(v, n, a))
    monkeypatch.setattr(search, "NEIGHBOUR_VALUES", 16 * 40 * 3)  # three columns of 40 neighbours at a time
    monkeypatch.setattr(reranking, "NEIGHBOUR_VALUES", 16 * 40 * 3)
    chunked = (database_augmentation(database, 39, alpha=1), alpha_query_expansion(queries, database, ranks, 40))
    assert max(held) <= 16 * 40 * 3 and len(held) == 14 + 3
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match=r"9 queries keeping their 40 nearest 16-d descriptors would hold .* give k "
                                         r"13 or less"):
        nearest_with_distractors(database, queries, 40, [(0, database.T)])


def test_more_neighbours_than_readable_images_are_refused():
    """An unreadable image scores -inf but keeps a descriptor (whitened, not zero): with k past
    the readable images, αQE gave it a weight."""
    database = TestDatabase(np.eye(4, dtype=np.float32), excluded=[1, 3])
    query = np.array([[1.0], [0.0], [0.0], [0.0]], dtype=np.float32)
    assert database.nearest(query, 2)[0][:, 0].tolist() == [0, 2]
    with pytest.raises(ConfigError, match=r"3 neighbours asked for, but the database holds 2 images that could be "
                                          r"read; give 2 or less"):
        database.nearest(query, 3)


@pytest.mark.parametrize("alpha", [float("nan"), -1.0, float("inf"), True, "3"])
def test_a_power_that_would_weigh_neighbours_wrongly_is_refused_by_every_expansion(alpha):
    """αQE and DBA took any alpha: NaN gave NaN descriptors, -1 weighed the nearest neighbour
    least (Reranking already refused them)."""
    from aml.evaluation.reranking import weighted_expansion

    database = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], dtype=np.float32)
    query = np.array([[0.8], [0.6]], dtype=np.float32)
    ranks = rank_database(database, query)
    calls = {"αQE's alpha": lambda: alpha_query_expansion(query, database, ranks, 2, alpha=alpha),
             "DBA's alpha": lambda: database_augmentation(database, 1, alpha=alpha),
             "alpha": lambda: weighted_expansion(query, database[:, ranks[:2, 0]][:, :, None], alpha)}
    for what, call in calls.items():
        with pytest.raises(ConfigError, match=f"^{what} must be a finite number >= 0, got"):
            call()


def test_neighbour_counts_are_integers_numpys_included():
    """k=2.0 was a TypeError from a slice or torch.topk, a ranking given as a list an
    AttributeError; a numpy integer is a count like any other, a float none."""
    database = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], dtype=np.float32)
    query = np.array([[0.8], [0.6]], dtype=np.float32)
    ranks = rank_database(database, query)
    expected = alpha_query_expansion(query, database, ranks, 2)
    assert np.array_equal(alpha_query_expansion(query, database, ranks.tolist(), np.int64(2)), expected)
    assert np.array_equal(database_augmentation(database, np.int32(1)), database_augmentation(database, 1))
    with pytest.raises(ConfigError, match=r"^αQE's k must be an integer >= 0, got 2.0$"):
        alpha_query_expansion(query, database, ranks, 2.0)
    for bad in (2.0, np.float64(400), True):
        with pytest.raises(ConfigError, match=r"^SuperGlobal.m must be a positive integer, got "):
            SuperGlobal(m=bad)
    with pytest.raises(ConfigError, match=r"^DBA's k must be an integer >= 0, got -1$"):
        database_augmentation(database, -1)
    assert type(Reranking(qe=np.int64(2)).qe) is int  # faiss takes Python ints alone
    assert type(SuperGlobal(m=np.int64(10)).m) is int


@pytest.mark.parametrize("excluded", [[-1], [3], [0.0]])
def test_excluded_images_outside_the_database_are_refused(excluded):
    """excluded=[-1] ranked the last image last without a word; [N] was torch's IndexError."""
    database = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], dtype=np.float32)
    query = np.array([[0.6], [0.8]], dtype=np.float32)
    message = rf"^excluded holds {excluded[0]!r}, not an index of the database's 3 images \(0 to 2\)$"
    for call in (lambda: rank_database(database, query, excluded=excluded),
                 lambda: nearest(database, query, 1, excluded=excluded),
                 lambda: database_augmentation(database, 1, excluded=excluded)):
        with pytest.raises(ConfigError, match=message):
            call()
    for given in (np.array([2]), torch.tensor([2]), {2}, (np.int64(2),)):
        assert rank_database(database, query, excluded=given)[:, 0].tolist() == [1, 0, 2]
