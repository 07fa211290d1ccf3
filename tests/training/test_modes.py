"""Tuple construction of every mode and the mining rules."""

from collections import Counter

import numpy as np
import pytest
import torch

from aml.training.mining import mine_hard_negatives, random_negatives, teacher_triplets
from aml.training.modes import MODES, EpochSizes, build_epoch_tuples, epoch_tuple_count, validation_mode

N = 40
DB = {"cids": [f"{i:08x}" for i in range(N)], "cluster": [i // 4 for i in range(N)],
      "qidxs": [i for i in range(0, N, 4)], "pidxs": [i + 1 for i in range(0, N, 4)]}


def unit_columns(seed, n=N, d=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, n, generator=g)
    return x / x.norm(dim=0)


TEACHER = unit_columns(1)
STUDENT = unit_columns(2)


class CountingEncoder:
    def __init__(self):
        self.calls = []

    def __call__(self, indices):
        self.calls.append(list(indices))
        return STUDENT[:, list(indices)]


def build(mode, sym=False, sizes=EpochSizes(5, 20, 3)):
    encoder = CountingEncoder()
    tuples, _ = build_epoch_tuples(MODES[mode], DB, sizes, torch.Generator().manual_seed(0), encoder, TEACHER, sym)
    return tuples, encoder


def test_std_mines_in_student_space_with_images_only():
    tuples, encoder = build("std")
    assert len(tuples) == 5 and len(encoder.calls) == 2  # queries, then the pool
    for t in tuples:
        assert t.labels == (-1, 1, 0, 0, 0) and not any(t.from_teacher)
        assert DB["pidxs"][DB["qidxs"].index(t.members[0])] == t.members[1]


def test_ts_is_asymmetric_and_mines_student_queries_against_teacher_pool():
    tuples, encoder = build("ts")
    assert len(encoder.calls) == 1 and len(tuples) == 5  # only the queries go through the student
    for t in tuples:
        assert t.from_teacher == (False, True, True, True, True) and t.labels == (-1, 1, 0, 0, 0)


def test_ts_sym_puts_every_member_through_the_student():
    tuples, _ = build("ts", sym=True)
    assert len(tuples) == 5 and all(t.from_teacher == (False,) * 5 for t in tuples)


def test_ts_self_adds_teacher_descriptor_of_the_query():
    tuples, _ = build("ts_self")
    assert len(tuples) == 5
    for t in tuples:
        assert t.members[1] == t.members[0] and t.labels == (-1, 1, 1, 0, 0, 0)
        assert t.from_teacher == (False, True, True, True, True, True)
    sym, _ = build("ts_self", sym=True)
    assert len(sym) == 5 and all(t.from_teacher == (False, True, False, False, False, False) for t in sym)


def test_ts_rand_needs_no_network():
    tuples, encoder = build("ts_rand")
    assert encoder.calls == [] and all(len(t.members) == 5 for t in tuples)


def test_regression_modes_pair_an_image_with_its_teacher_descriptor():
    tuples, encoder = build("reg", sizes=EpochSizes(5, 12, 3))
    assert len(tuples) == 12 and encoder.calls == []
    assert all(t.members[0] == t.members[1] and t.labels == (-1, 1) and t.from_teacher == (False, True) for t in tuples)
    only_pos, _ = build("reg_only_pos", sizes=EpochSizes(5, 12, 3))
    assert only_pos == tuples  # the original ran reg_only_pos exactly as reg


def test_rand_draws_single_images_with_their_teacher_descriptor():
    tuples, _ = build("rand", sizes=EpochSizes(5, 10, 3))
    assert len(tuples) == 10 and len({t.members[0] for t in tuples}) == 10
    assert all(t.members[0] == t.members[1] and t.from_teacher == (False, True) for t in tuples)


def test_validation_uses_the_original_val_tuples():
    """The original's val datasets: TuplesDatasetTS for ts, ts_self, reg, reg_only_pos and
    rand_tpl_a; TuplesDataset (std) for std and rand_tpl; their own for ts_rand and rand."""
    expected = {"std": "std", "ts": "ts", "ts_self": "ts", "ts_rand": "ts_rand", "reg": "ts", "reg_only_pos": "ts",
                "rand": "rand", "rand_tpl": "std", "rand_tpl_a": "ts"}
    assert {name: validation_mode(mode).name for name, mode in MODES.items()} == expected


def test_random_negatives_have_the_original_distribution():
    """The original drew, for every candidate r, a fresh permutation of the pool and took its
    r-th element; aml walks one permutation. Both make each accepted negative uniform over
    the pool images of clusters not yet taken: compare the empirical distributions."""
    query_clusters, pool_clusters = [0], [0, 0, 1, 1, 1, 2, 3, 3]
    rng = torch.Generator().manual_seed(5)

    def original():
        taken, seen, r = [], {0}, 0
        while len(taken) < 2:
            # (the original indexed [r] and crashed once r ran past the pool; any fixed position
            # of a fresh permutation is uniform, so wrapping around keeps its distribution)
            candidate = torch.randperm(len(pool_clusters), generator=rng)[r % len(pool_clusters)].item()
            r += 1
            if pool_clusters[candidate] not in seen:
                taken.append(candidate)
                seen.add(pool_clusters[candidate])
        return tuple(taken)

    draws = 6000
    ours = Counter(tuple(random_negatives(query_clusters, pool_clusters, 2, rng)[0]) for _ in range(draws))
    theirs = Counter(original() for _ in range(draws))
    assert set(ours) == set(theirs)
    for pair in theirs:  # each frequency within ~4.5 standard deviations
        assert abs(ours[pair] - theirs[pair]) / draws < 0.02, (pair, ours[pair], theirs[pair])


def test_random_triplets_follow_teacher_ranking():
    tuples, _ = build("rand_tpl", sizes=EpochSizes(6, 30, 3))
    assert len(tuples) == 6
    for t in tuples:
        anchor, positive, negative = t.members
        assert t.labels == (-1, 1, 0) and not any(t.from_teacher)
        assert TEACHER[:, anchor] @ TEACHER[:, positive] >= TEACHER[:, anchor] @ TEACHER[:, negative]
    asym, _ = build("rand_tpl_a", sizes=EpochSizes(6, 30, 3))
    assert all(t.from_teacher == (False, True, True) for t in asym)


def test_random_triplets_take_at_most_one_anchor_per_query_pair_and_their_pool_after_them():
    """The original caps its query size by the db's query pairs in the triplet modes too; aml
    took --query-size anchors from the images, and its pool after as many."""
    sizes = EpochSizes(20, 10, 3)  # 10 query pairs in DB
    tuples, _ = build("rand_tpl", sizes=sizes)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0)).tolist()
    assert [t.members[0] for t in tuples] == order[:10]
    assert {m for t in tuples for m in t.members[1:]} <= set(order[10:20])
    assert epoch_tuple_count(MODES["rand_tpl"], DB, sizes) == 10


def test_mining_takes_best_scoring_one_per_cluster_never_the_query_cluster():
    query = torch.tensor([[1.0], [0.0]])
    pool = torch.tensor([[0.99, 0.98, 0.97, 0.5, 0.2], [0.14, 0.2, 0.24, 0.87, 0.98]])
    pool = pool / pool.norm(dim=0)
    clusters = np.array([7, 3, 3, 4, 5])
    negatives, distance = mine_hard_negatives(query, pool, [7], clusters, nnum=3)
    assert negatives == [[1, 3, 4]]  # 0 is the query's cluster, 2 repeats cluster 3
    expected = np.mean([torch.linalg.vector_norm(query[:, 0] - pool[:, i] + 1e-6).item() for i in (1, 3, 4)])
    assert distance == pytest.approx(expected)


def test_mining_stops_when_pool_runs_out_of_clusters():
    negatives, _ = mine_hard_negatives(torch.ones(2, 1), torch.ones(2, 3), [0], [0, 1, 1], nnum=5)
    assert negatives == [[1]]


def test_random_negatives_respect_clusters():
    picked = random_negatives([0, 1], [0, 0, 1, 2, 2, 3], 3, torch.Generator().manual_seed(0))
    assert all(len({[0, 0, 1, 2, 2, 3][i] for i in p}) == len(p) for p in picked)
    assert all(0 not in {[0, 0, 1, 2, 2, 3][i] for i in picked[0]} for _ in [0])


def test_teacher_triplets_positive_ranked_above_negative():
    anchors, pool = unit_columns(3, 4), unit_columns(4, 50)
    triplets = teacher_triplets(anchors, pool, torch.Generator().manual_seed(1), top_k=10)
    assert len(triplets) == anchors.shape[1]
    for a, (p, n) in enumerate(triplets):
        assert anchors[:, a] @ pool[:, p] >= anchors[:, a] @ pool[:, n]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("sizes", [EpochSizes(5, 20, 3), EpochSizes(15, 60, 2)], ids=["small", "beyond the queries"])
def test_the_tuple_count_known_before_mining_is_the_draws(mode, sizes):
    """Training refuses a split of fewer tuples than a batch before it mines, by epoch_tuple_count:
    it must count what build_epoch_tuples draws, in every mode."""
    from aml.training.modes import epoch_tuple_count

    tuples, _ = build(mode, sizes=sizes)
    assert len(tuples) == epoch_tuple_count(MODES[mode], DB, sizes)
