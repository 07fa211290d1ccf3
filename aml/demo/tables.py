"""The demo's table: text for the terminal, Markdown and a bar chart for results/."""

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from aml.data.testsets import REPORTED_LEVELS
from aml.reports.charts import bar_chart
from aml.utils.atomic import atomic_write
from aml.utils.text_files import strict_json

log = logging.getLogger(__name__)

DATASETS = ("synth-oxford", "synth-paris")


def _cell(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def format_table(rows: List[Dict]) -> str:
    """One line per (network, test): mAP Medium / Hard on each synthetic test set. A row's
    ``results`` is one test.py result, or a list of them (one per seed): then the cells
    show mean ± standard deviation over the seeds."""
    width = 15
    runs = [row["results"] if isinstance(row["results"], list) else [row["results"]] for row in rows]
    if any(len(r) > 1 for r in runs):
        width = 16
    header = f"{'network':34s} {'test':11s}" + "".join(f" {d + ' M':>{width}s} {d + ' H':>{width}s}" for d in DATASETS)
    lines = [header, "-" * len(header)]
    for row, results in zip(rows, runs, strict=True):
        cells = "".join(
            f" {_cell([100 * r[d]['plain'][level]['map'] for r in results]):>{width}s}"
            for d in DATASETS
            for level in REPORTED_LEVELS
        )
        lines.append(f"{row['network']:34s} {row['test']:11s}{cells}")
    return "\n".join(lines)


def _series(rows: List[Dict]) -> Dict[str, tuple]:
    """{'<dataset> M'/'H': (means, standard deviations over seeds)} per row, in percent."""
    series = {}
    for d in DATASETS:
        for level in REPORTED_LEVELS:
            values = [[100 * r[d]["plain"][level]["map"] for r in _runs(row)] for row in rows]
            series[f"{d} {level[0].upper()}"] = (
                [float(np.mean(v)) for v in values],
                [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values],
            )
    return series


def _runs(row: Dict) -> List[Dict]:
    return row["results"] if isinstance(row["results"], list) else [row["results"]]


def markdown_table(rows: List[Dict]) -> str:
    """The table of `format_table` as Markdown (mAP in %, mean ± std over seeds)."""
    header = "| network | test | " + " | ".join(f"{d} {lv}" for d in DATASETS for lv in ("M", "H")) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(DATASETS))]
    for row in rows:
        cells = [
            _cell([100 * r[d]["plain"][level]["map"] for r in _runs(row)])
            for d in DATASETS
            for level in REPORTED_LEVELS
        ]
        lines.append(f"| {row['network']} | {row['test']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_record(rows: List[Dict], seeds: Sequence[int], **extra) -> Dict:
    """The table as data: per row its mAP (%) Medium and Hard per test set and seed, plus ``extra``."""
    table = [
        {
            "network": row["network"],
            "test": row["test"],
            "map": {
                d: {
                    level: [round(100 * r[d]["plain"][level]["map"], 4) for r in _runs(row)]
                    for level in REPORTED_LEVELS
                }
                for d in DATASETS
            },
        }
        for row in rows
    ]
    return {"seeds": list(seeds), "rows": table, **extra}


def chart_group(network: str, test: str) -> str:
    """A row's label under its bars: the network without "student", its mode on a line of its
    own, then the test ("mobilenet_v2\\n(reg)\\nasymmetric")."""
    return f"{network.replace('student ', '').replace(' (', chr(10) + '(')}\n{test}"


def write_results(
    rows: List[Dict], folder: Path, seeds: Sequence[int], notes: Sequence[str] = (), record: Optional[Dict] = None
) -> Path:
    """``results.md`` (the table, then ``notes`` as a list), ``results.png`` (a bar chart, when
    matplotlib is installed) and ``results.json`` (`results_record` with ``record``:
    timings, machine, command) in ``folder``; returns the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = strict_json(results_record(rows, seeds, notes=list(notes), **(record or {})))  # NaN: null
    atomic_write(folder / "results.json", lambda out: out.write(data))
    spread = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    text = (
        f"# aml demo results\n\nmAP (%) on the synthetic test sets, Medium (M) and Hard (H); {spread}.\n\n"
        + markdown_table(rows)
        + "\n"
        + "".join(f"\n- {note}" for note in notes)
        + "\n" * bool(notes)
    )
    atomic_write(folder / "results.md", lambda out: out.write(text.encode()))
    groups = [chart_group(row["network"], row["test"]) for row in rows]
    if not bar_chart(groups, _series(rows), folder / "results.png", title=f"aml demo ({spread})"):
        log.warning(">> results.png not drawn: matplotlib is not installed (pip install matplotlib)")
    return folder / "results.md"
