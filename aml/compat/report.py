"""A compatibility matrix for people: a text table per test set, search and level (what the
command prints), and the heatmaps (``--heatmap``), with the same marks."""

from pathlib import Path
from typing import List

import numpy as np

from aml.compat.matrix import CompatibilityMatrix
from aml.reports.charts import HeatmapPanel, heatmap_grid

BEATS_TEACHER, BCT, NO_SEARCH, UNDEFINED = "*", "+", "-", "n/a"
CORNER = "queries \\ database"


def legend(matrix: CompatibilityMatrix) -> str:
    """What the marks of a matrix's cells mean.

    Args:
        matrix: the matrix (its teacher is named).

    Returns:
        One line.

    Examples:
        >>> from aml.compat import CompatibilityMatrix, MatrixNetwork
        >>> from aml.compat.report import legend
        >>> teacher = MatrixNetwork("teacher", "t", "t.pth", "checkpoint", "resnet18", 8, "0" * 16)
        >>> legend(CompatibilityMatrix((teacher,), {}))[:45]
        "*: beats the teacher's symmetric mAP (teacher"
    """
    return (
        f"{BEATS_TEACHER}: beats the teacher's symmetric mAP (teacher: {matrix.teacher.label}); "
        f"{BCT}: BCT's criterion, the row's queries in the column's database beat the column's "
        f"network on its own; {NO_SEARCH}: the dimensions differ, no search; {UNDEFINED}: searched, but no "
        "query has a positive at this level, so the mAP is undefined"
    )


def cell_texts(matrix: CompatibilityMatrix, dataset: str, search: str, level: str) -> List[List[str]]:
    """Each cell of one matrix as text: the mAP in %, then its marks.

    Args:
        matrix: the matrix.
        dataset: the test set.
        search: the search (``plain``, ``whiten``).
        level: the level (``medium``, ``hard``, ``all``).

    Returns:
        N rows of N texts (``"41.20*+"``, ``"-"`` where no search, ``"n/a"`` where the mAP is
        undefined).
    """
    better, bct = matrix.marks(dataset, search, level)
    dims = [network.dim for network in matrix.networks]

    def text(value: float, searched: bool, b: bool, c: bool) -> str:
        if not searched:
            return NO_SEARCH
        return UNDEFINED if np.isnan(value) else f"{100 * value:.2f}" + BEATS_TEACHER * bool(b) + BCT * bool(c)

    return [
        [
            text(value, dims[row] == dims[column], b, c)
            for column, (value, b, c) in enumerate(zip(values, better_row, bct_row, strict=True))
        ]
        for row, (values, better_row, bct_row) in enumerate(
            zip(matrix.maps[dataset, search, level], better, bct, strict=True)
        )
    ]


def title(dataset: str, search: str, level: str) -> str:
    """The name of one matrix: ``synth-oxford + whiten, mAP Hard (%)``.

    Args:
        dataset: the test set.
        search: the search (``plain`` is not named).
        level: the level (``all``, a classic test set's, is not named).

    Returns:
        The name.

    Examples:
        >>> from aml.compat.report import title
        >>> title("synth-oxford", "whiten", "hard")
        'synth-oxford + whiten, mAP Hard (%)'
    """
    searched = "" if search == "plain" else f" + {search}"
    named = "" if level == "all" else f" {level.capitalize()}"
    return f"{dataset}{searched}, mAP{named} (%)"


def format_matrix(matrix: CompatibilityMatrix, dataset: str, search: str = "plain", level: str = "medium") -> str:
    """One matrix as a text table: a row per query network, a column per database network.

    Args:
        matrix: the matrix.
        dataset: the test set.
        search: the search.
        level: the level.

    Returns:
        The title line, the header and a line per network.

    Examples:
        >>> import numpy as np
        >>> from aml.compat import CompatibilityMatrix, MatrixNetwork, format_matrix
        >>> teacher = MatrixNetwork("teacher", "t", "t.pth", "checkpoint", "resnet18", 8, "0" * 16)
        >>> student = MatrixNetwork("student", "s", "s.pth", "checkpoint", "resnet18", 8, "1" * 16)
        >>> maps = {("synth-oxford", "plain", "medium"): np.array([[0.6, 0.2], [0.65, 0.3]])}
        >>> print(format_matrix(CompatibilityMatrix((teacher, student), maps), "synth-oxford"))
        >> synth-oxford, mAP Medium (%)
        queries \\ database  teacher    student
        teacher               60.00      20.00
        student               65.00*+    30.00
    """
    labels, texts = matrix.labels, cell_texts(matrix, dataset, search, level)
    first = max(len(CORNER), *(len(label) for label in labels))
    width = max(9, *(len(label) + 3 for label in labels))

    def aligned(text: str) -> str:  # labels and numbers right-aligned, the marks after them
        number = text.rstrip(BEATS_TEACHER + BCT)
        return f" {number:>{width - 2}s}{text[len(number) :]:2s}"

    lines = [f"{CORNER:{first}s}" + "".join(aligned(label) for label in labels)]
    lines += [f"{label:{first}s}" + "".join(map(aligned, row)) for label, row in zip(labels, texts, strict=True)]
    return "\n".join([f">> {title(dataset, search, level)}"] + [line.rstrip() for line in lines])


def format_matrices(matrix: CompatibilityMatrix) -> str:
    """Every matrix as a text table (per test set, search and level), then the legend.

    Args:
        matrix: the matrix.

    Returns:
        The tables, separated by blank lines.

    Examples:
        >>> from aml.compat import compatibility_matrix, format_matrices
        >>> matrix = compatibility_matrix(networks, settings)  # doctest: +SKIP
        >>> print(format_matrices(matrix))  # doctest: +SKIP
        >> synth-oxford, mAP Medium (%)
        ...
    """
    tables = [
        format_matrix(matrix, dataset, search, level)
        for dataset in matrix.datasets
        for search in matrix.searches(dataset)
        for level in matrix.levels(dataset)
    ]
    return "\n\n".join(tables + [legend(matrix)])


def draw_matrix(matrix: CompatibilityMatrix, path: Path, search: str = "plain") -> bool:
    """The heatmaps of one search, each cell with its mAP and marks, into one PNG.

    One heatmap per test set and level, in that order, as many in a row of the grid as a test
    set has levels at most.

    Args:
        matrix: the matrix.
        path: the PNG file to write (atomically).
        search: the search drawn (``plain``, or ``whiten`` with whitening).

    Returns:
        False when matplotlib is not installed (nothing is written).

    Examples:
        >>> from pathlib import Path
        >>> from aml.compat import compatibility_matrix, draw_matrix
        >>> matrix = compatibility_matrix(networks, settings)  # doctest: +SKIP
        >>> draw_matrix(matrix, Path("compat.png"))  # doctest: +SKIP
        True
    """
    panels = [
        HeatmapPanel(
            title(dataset, search, level),
            100 * matrix.maps[dataset, search, level],
            cell_texts(matrix, dataset, search, level),
        )
        for dataset in matrix.datasets
        for level in matrix.levels(dataset)
    ]
    columns = max(len(matrix.levels(dataset)) for dataset in matrix.datasets)
    return heatmap_grid(panels, matrix.labels, path, ("queries by", "database by"), columns, legend(matrix))
