"""Bar charts of results (the demo's ``results.png``); matplotlib is optional."""

import textwrap
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from aml.reports.curves import _matplotlib_figure
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
    matplotlib is not installed."""
    classes = _matplotlib_figure()
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
