"""Charts of results: bar charts (the demo's ``results.png``) and heatmaps (the compatibility
matrices of ``python -m aml.compat``); matplotlib is optional."""

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from aml.reports.curves import figure_classes_for
from aml.utils.atomic import atomic_write


LABEL_WIDTH = 18  # characters per line of a group's label: neighbours 1.5 inches apart at 8 pt do not touch


def wrap_label(label: str, width: int = LABEL_WIDTH) -> str:
    """A group's label broken at spaces into lines of at most ``width`` characters; a longer
    word keeps a line of its own.

    Args:
        label: the label; its own line breaks are kept.
        width: the most characters per line.

    Returns:
        The label with line breaks.

    Examples:
        >>> wrap_label("teacher efficientnet_lite2\\n(std)")
        'teacher\\nefficientnet_lite2\\n(std)'
    """
    return "\n".join(
        textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) or line for line in label.split("\n")
    )


def bar_chart(
    groups: Sequence[str],
    series: Dict[str, Tuple[Sequence[float], Sequence[float]]],
    path: Path,
    ylabel: str = "mAP (%)",
    title: str = "",
) -> bool:
    """Grouped bars: one group per entry of ``groups`` (labels wrapped by `wrap_label`), one
    bar per series (mean, with the spread as an error bar when non-zero). Returns False when
    matplotlib is not installed (an earlier PNG at ``path`` removed)."""
    classes = figure_classes_for(path)
    if classes is None:
        return False
    Figure, Canvas, _ = classes
    figure = Figure(figsize=(max(6.0, 1.5 * len(groups)), 4.8), dpi=100)
    axes = figure.subplots()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, (means, spreads)) in enumerate(series.items()):
        errors = spreads if any(s > 0 for s in spreads) else None
        axes.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=name)
    axes.set_xticks(x, [wrap_label(group) for group in groups], fontsize=8)
    axes.set(ylabel=ylabel, title=title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    Canvas(figure)
    atomic_write(path, lambda out: figure.savefig(out, format="png"))
    return True


@dataclass(frozen=True)
class HeatmapPanel:
    """One heatmap of a grid: its title, its values (NaN: none, drawn grey) and each cell's text."""

    title: str
    values: np.ndarray
    texts: Sequence[Sequence[str]]


def heatmap_grid(
    panels: Sequence[HeatmapPanel],
    labels: Sequence[str],
    path: Path,
    axes_labels: Tuple[str, str] = ("", ""),
    columns: int = 2,
    note: str = "",
) -> bool:
    """Square heatmaps side by side, ``columns`` to a row, each with its own colour scale, the
    rows and columns named by ``labels`` (wrapped by `wrap_label`) and each cell's text written
    on it; ``note`` goes under the grid. Returns False when matplotlib is not installed (an
    earlier PNG at ``path`` removed)."""
    classes = figure_classes_for(path)
    if classes is None:
        return False
    Figure, Canvas, _ = classes
    from matplotlib import colormaps

    colours = colormaps["viridis"].with_extremes(bad="0.85")  # grey: no value
    size = len(labels)
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    side = 1.6 + 0.9 * size
    figure = Figure(figsize=(columns * (side + 1.2), rows * (side + 0.4) + 0.4 * bool(note)), dpi=100)
    grid = figure.subplots(rows, columns, squeeze=False)
    ticks = [wrap_label(label, 12) for label in labels]
    for k, axes in enumerate(grid.flat):
        if k >= len(panels):
            axes.set_axis_off()
            continue
        panel = panels[k]
        values = np.asarray(panel.values, dtype=float)
        image = axes.imshow(np.ma.masked_invalid(values), cmap=colours)
        low, high = image.get_clim()
        for (i, j), text in np.ndenumerate(np.asarray(panel.texts, dtype=object)):
            dark = not np.isfinite(values[i, j]) or high == low or (values[i, j] - low) / (high - low) > 0.6
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if dark else "white")
        axes.set_xticks(range(size), ticks, fontsize=8, rotation=30, ha="right")
        axes.set_yticks(range(size), ticks, fontsize=8)
        axes.set(xlabel=axes_labels[1], ylabel=axes_labels[0], title=panel.title)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    if note:
        figure.text(0.01, 0.01, note, fontsize=8, va="bottom", wrap=True)
    figure.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    Canvas(figure)
    atomic_write(path, lambda out: figure.savefig(out, format="png"))
    return True
