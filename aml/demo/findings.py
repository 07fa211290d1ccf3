"""The paper's two findings, checked on the demo's table.

The abstract of Budnik & Avrithis (CVPR 2021) states: (1) plain regression is surprisingly
effective and works best in *asymmetric* testing; (2) asymmetric metric learning (a
contrastive student trained against the teacher's descriptors, ``ts``/``ts_self``) works
best in *symmetric* testing, even letting the student outperform the teacher. Each is
turned into comparisons of mean mAP over seeds, on every test set, at Medium and Hard.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.demo.tables import DATASETS

LEVELS = ("medium", "hard")
METRIC_LEARNING = ("ts_self", "ts")


@dataclass(frozen=True)
class Finding:
    """One claim of the paper, what was compared, and whether the table bears it out."""

    claim: str
    comparison: str
    holds: bool
    evidence: str  # mean mAP of the compared rows, Medium, per test set
    gaps: Tuple[float, ...]  # winner minus best other, per (test set, level), in mAP points


def _row(rows: Sequence[Dict], network: str, test: str) -> Optional[Dict]:
    return next((row for row in rows if row["network"] == network and row["test"] == test), None)


def _means(row: Dict) -> Dict[Tuple[str, str], float]:
    runs = row["results"] if isinstance(row["results"], list) else [row["results"]]
    return {
        (d, level): float(np.mean([100 * r[d]["plain"][level]["map"] for r in runs]))
        for d in DATASETS
        for level in LEVELS
    }


def _compare(claim: str, comparison: str, winners: Dict[str, Dict], others: Dict[str, Dict]) -> Finding:
    """The best of ``winners`` (label -> row) against the best of ``others``, cell by cell."""
    win = {label: _means(row) for label, row in winners.items()}
    rest = {label: _means(row) for label, row in others.items()}
    cells = [(d, level) for d in DATASETS for level in LEVELS]
    gaps = tuple(max(m[c] for m in win.values()) - max(m[c] for m in rest.values()) for c in cells)
    medium = {
        label: " / ".join(f"{means[(d, LEVELS[0])]:.1f}" for d in DATASETS) for label, means in {**win, **rest}.items()
    }
    evidence = "; ".join(f"{label} {values}" for label, values in medium.items())
    evidence += " (Medium, " + " / ".join(DATASETS) + ")"
    return Finding(claim, comparison, all(gap > 0 for gap in gaps), evidence, gaps)


def paper_findings(rows: Sequence[Dict], student_arch: str, teacher_arch: str) -> List[Finding]:
    """The comparisons the demo's table allows (a student mode that was not run drops the
    findings that need it)."""

    def student(mode: str, test: str) -> Optional[Dict]:
        return _row(rows, f"student {student_arch} ({mode})", test)

    teacher = _row(rows, f"teacher {teacher_arch} (std)", "symmetric")
    findings = []
    asym = {m: student(m, "asymmetric") for m in ("reg", *METRIC_LEARNING)}
    sym = {m: student(m, "symmetric") for m in ("reg", *METRIC_LEARNING)}
    learning_asym = {f"{m} asym": row for m in METRIC_LEARNING if (row := asym[m]) is not None}
    learning_sym = {f"{m} sym": row for m in METRIC_LEARNING if (row := sym[m]) is not None}
    reg_asym, reg_sym = asym["reg"], sym["reg"]
    if reg_asym is not None and learning_asym:
        findings.append(
            _compare(
                "(1) plain regression works best in asymmetric testing",
                "asymmetric: reg beats " + " and ".join(m.split()[0] for m in learning_asym),
                {"reg asym": reg_asym},
                learning_asym,
            )
        )
    if reg_sym is not None and learning_sym:
        findings.append(
            _compare(
                "(2) asymmetric metric learning works best in symmetric testing",
                "symmetric: the best of " + " and ".join(m.split()[0] for m in learning_sym) + " beats reg",
                learning_sym,
                {"reg sym": reg_sym},
            )
        )
    if teacher is not None and learning_sym:
        findings.append(
            _compare(
                "(2) ... even letting the student outperform the teacher",
                "symmetric: the best of " + " and ".join(m.split()[0] for m in learning_sym) + " beats the teacher",
                learning_sym,
                {"teacher": teacher},
            )
        )
    return findings


def findings_lines(findings: Sequence[Finding]) -> List[str]:
    """One line per finding: the claim, holds / does not hold, the comparison, the numbers."""
    return [
        f"{f.claim}: {'holds' if f.holds else 'does NOT hold'} ({f.comparison}, on "
        f"{sum(g > 0 for g in f.gaps)} of {len(f.gaps)} test set x level cells; {f.evidence})"
        for f in findings
    ]
