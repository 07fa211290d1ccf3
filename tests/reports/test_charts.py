"""Bar charts: the groups' labels are wrapped so that neighbours do not run into each other."""

import pytest

from aml.demo.tables import chart_group
from aml.reports.charts import LABEL_WIDTH, bar_chart, wrap_label


def test_labels_break_at_spaces_into_short_lines_and_keep_long_words_whole():
    assert wrap_label("teacher efficientnet_lite2\n(std)\nsymmetric") == "teacher\nefficientnet_lite2\n(std)\nsymmetric"
    assert wrap_label("mobilenet_v2 ImageNet only", width=14) == "mobilenet_v2\nImageNet only"
    assert wrap_label("a_very_long_name_without_spaces", width=5) == "a_very_long_name_without_spaces"
    assert wrap_label("") == ""


@pytest.mark.parametrize("network", ["teacher efficientnet_lite2 (std)", "student mobilenet_v2 untrained",
                                     "student mobilenet_v2 ImageNet only", "student mobilenet_v2 (ts_self)"])
def test_every_line_of_a_demo_label_fits_its_slot(network):
    for line in wrap_label(chart_group(network, "asymmetric")).split("\n"):
        assert len(line) <= LABEL_WIDTH or " " not in line, line


def test_the_chart_is_drawn_with_wrapped_labels(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    saved, real = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: saved.append(figure) or real(
        figure, *args, **kwargs))
    path = tmp_path / "chart.png"
    groups = [chart_group("teacher efficientnet_lite2 (std)", "symmetric"), chart_group("student (reg)", "asymmetric")]
    assert bar_chart(groups, {"M": ([70.0, 20.0], [0.0, 2.0]), "H": ([40.0, 10.0], [0.0, 1.0])}, path)
    assert path.stat().st_size > 1000
    (axes,) = saved[0].axes
    assert [t.get_text() for t in axes.get_xticklabels()] == [wrap_label(group) for group in groups]
    assert "\n" in axes.get_xticklabels()[0].get_text()  # the teacher's label does not fit one line
    heights = sorted(round(bar.get_height(), 6) for bar in axes.patches)
    assert heights == [10.0, 20.0, 40.0, 70.0]

