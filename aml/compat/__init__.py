"""Which networks can search each other's databases: the compatibility matrix of several
networks (`compatibility_matrix`: every network's queries in every network's database, each
cell test.py's mAP for the pair), its marks (`beats_teacher`, `bct_compatible`) and its tables
and heatmaps (`format_matrices`, `draw_matrix`)."""

from aml.compat.marks import bct_compatible, beats_teacher
from aml.compat.matrix import CompatibilityMatrix, MatrixNetwork, check_distinct, compatibility_matrix
from aml.compat.report import draw_matrix, format_matrices, format_matrix

__all__ = [
    "CompatibilityMatrix",
    "MatrixNetwork",
    "bct_compatible",
    "beats_teacher",
    "check_distinct",
    "compatibility_matrix",
    "draw_matrix",
    "format_matrices",
    "format_matrix",
]
