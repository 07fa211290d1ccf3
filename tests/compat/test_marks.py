"""The marks of a compatibility matrix on hand-made numbers: the teacher's symmetric mAP beaten,
and BCT's criterion (new queries on the old database beat the old network on its own)."""

import numpy as np

from aml.compat import bct_compatible, beats_teacher

NO = np.nan
#: rows: the query network, columns: the database network (a teacher, two students, a 256-d
#: network with no search with the others); the diagonal is 0.60, 0.61, 0.58, 0.70
MAPS = np.array([
    [0.60, 0.62, 0.58, NO],
    [0.65, 0.61, 0.59, NO],
    [0.30, 0.45, 0.58, NO],
    [NO, NO, NO, 0.70],
])


def test_a_cell_beats_the_teacher_when_its_map_exceeds_the_teachers_own():
    assert beats_teacher(MAPS).tolist() == [
        [False, True, False, False],  # the teacher's queries in the first student's database
        [True, True, False, False],  # the first student's queries, in the teacher's database and its own
        [False, False, False, False],
        [False, False, False, True],  # the 256-d network alone; its other cells have no search
    ]


def test_the_teacher_can_be_any_network_and_its_own_cell_and_ties_are_not_marked():
    assert beats_teacher(MAPS, teacher=2).tolist() == [
        [True, True, False, False],  # 0.58 in the teacher's database equals its 0.58: not beaten
        [True, True, True, False],
        [False, False, False, False],
        [False, False, False, True],
    ]


def test_bct_compares_each_cell_with_its_database_networks_own_map():
    assert bct_compatible(MAPS).tolist() == [
        [False, True, False, False],  # 0.62 > 0.61; 0.58 ties the second student's own 0.58
        [True, False, True, False],  # 0.65 > 0.60 (the teacher's own), 0.59 > 0.58
        [False, False, False, False],
        [False, False, False, False],  # no search with the 256-d network, and never the diagonal
    ]


def test_a_single_network_has_nothing_to_mark():
    assert not beats_teacher(np.array([[0.5]])).any() and not bct_compatible(np.array([[0.5]])).any()
