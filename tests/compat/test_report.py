"""The matrix as people read it: text tables with the marks, the JSON record and its way back,
and the heatmaps."""

import json

import numpy as np
import pytest

from aml.compat import CompatibilityMatrix, MatrixNetwork, draw_matrix, format_matrices, format_matrix

NO = np.nan


def _matrix() -> CompatibilityMatrix:
    networks = (
        MatrixNetwork("teacher", "model_epoch2", "t.pth.tar", "checkpoint", "resnet18", 8, "0" * 16, "std"),
        MatrixNetwork("reg", "model_epoch2", "r.pth.tar", "checkpoint", "mobilenet_v2", 8, "1" * 16, "reg"),
        MatrixNetwork("wide", "wide", "w.pth.tar", "checkpoint", "resnet18", 16, "2" * 16),
    )
    maps = {
        ("synth-oxford", "plain", "medium"): np.array([[0.6, 0.62, NO], [0.65, 0.61, NO], [NO, NO, 0.5]]),
        ("synth-oxford", "plain", "hard"): np.array([[0.4, 0.2, NO], [0.1, 0.3, NO], [NO, NO, 0.2]]),
        ("oxford5k", "plain", "all"): np.array([[0.8, 0.1, NO], [0.1, 0.9, NO], [NO, NO, 0.7]]),
    }
    return CompatibilityMatrix(networks, maps)


def test_a_table_shows_each_cell_in_percent_with_its_marks_and_no_search_as_a_dash():
    assert format_matrix(_matrix(), "synth-oxford").splitlines() == [
        ">> synth-oxford, mAP Medium (%)",
        "queries \\ database  teacher        reg       wide",
        "teacher               60.00      62.00*+        -",
        "reg                   65.00*+    61.00*         -",
        "wide                      -          -      50.00",
    ]


def test_an_undefined_map_of_a_searched_pair_is_not_called_a_dimension_mismatch():
    """A level without any positive (NaN mAP) printed '-', which the legend reads as 'the
    dimensions differ, no search'."""
    matrix = _matrix()
    matrix.maps["synth-oxford", "plain", "hard"][:2, :2] = NO  # no query has a hard positive
    lines = format_matrix(matrix, "synth-oxford", level="hard").splitlines()
    assert lines[2:] == ["teacher                 n/a        n/a          -",
                         "reg                     n/a        n/a          -",
                         "wide                      -          -      20.00"]
    assert "n/a: searched, but no query has a positive at this level" in format_matrices(matrix)


def test_every_test_set_and_level_is_printed_with_the_legend():
    text = format_matrices(_matrix())
    assert [line for line in text.splitlines() if line.startswith(">>")] == [
        ">> synth-oxford, mAP Medium (%)", ">> synth-oxford, mAP Hard (%)", ">> oxford5k, mAP (%)"]
    assert text.splitlines()[-1].startswith("*: beats the teacher's symmetric mAP (teacher: teacher); +: BCT")


def test_the_record_holds_numbers_and_marks_and_gives_the_matrix_back():
    matrix = _matrix()
    record = json.loads(json.dumps(matrix.record()))
    cell = record["maps"]["synth-oxford"]["plain"]["medium"]
    assert cell["map"] == [[0.6, 0.62, None], [0.65, 0.61, None], [None, None, 0.5]]
    assert cell["beats_teacher"][1] == [True, True, False] and cell["bct"][0] == [False, True, False]
    assert record["teacher"] == "teacher" and [n["dim"] for n in record["networks"]] == [8, 8, 16]
    assert CompatibilityMatrix.from_record(record) == matrix
    assert matrix.datasets == ["synth-oxford", "oxford5k"] and matrix.levels("oxford5k") == ["all"]


def test_the_heatmaps_are_drawn_one_per_test_set_and_level(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    from PIL import Image

    saved, real = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: saved.append(figure) or real(
        figure, *args, **kwargs))
    path = tmp_path / "matrix.png"
    assert draw_matrix(_matrix(), path)
    width, height = Image.open(path).size  # Medium and Hard side by side, oxford5k's one mAP below
    assert 0.8 < width / height < 1.5 and path.stat().st_size > 10_000
    (figure,) = saved
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]  # colour bars have none
    assert titles == ["synth-oxford, mAP Medium (%)", "synth-oxford, mAP Hard (%)", "oxford5k, mAP (%)"]
    first = next(axes for axes in figure.axes if axes.get_title())
    assert [t.get_text() for t in first.texts][:3] == ["60.00", "62.00*+", "-"]  # each cell's mAP and marks
    assert [t.get_text() for t in first.get_xticklabels()] == ["teacher", "reg", "wide"]
