"""The paper's two findings, checked on the demo's table.

The abstract of Budnik & Avrithis (CVPR 2021) states: (1) plain regression is surprisingly
effective and works best in *asymmetric* testing; (2) asymmetric metric learning (a
contrastive student trained against the teacher's descriptors, ``ts``/``ts_self``) works
best in *symmetric* testing, even letting the student outperform the teacher. Each is
turned into comparisons of mean mAP over seeds, on every test set, at Medium and Hard; a
claim that holds on the means is said to hold on every seed only when each seed's runs go the
same way (a gap smaller than the spread between seeds is not a finding), and a single seed's
verdict is marked as indicative.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.data.testsets import REPORTED_LEVELS
from aml.demo.tables import DATASETS

METRIC_LEARNING = ("ts_self", "ts")


@dataclass(frozen=True)
class Finding:
    """One claim of the paper, what was compared, and whether the table bears it out.

    ``holds`` compares means over seeds; ``every_seed`` says whether each seed's best winner
    beat each seed's best other, whichever rows they are (seed by seed where both have
    several, against the one run where one has one), in every cell; ``seeds`` is the most seeds a compared row has."""

    claim: str
    comparison: str
    holds: bool
    evidence: str  # mean mAP of the compared rows, Medium, per test set
    gaps: Tuple[float, ...]  # winner minus best other, per (test set, level), in mAP points
    seeds: int = 1
    every_seed: bool = False

    @property
    def verdict(self) -> str:
        """``holds on every one of 3 seeds``, ``holds on the means only ...``, ``does NOT hold``, ..."""
        if not self.holds:
            return "does NOT hold"
        if self.seeds == 1:
            return "holds on its one seed (indicative: no spread between seeds to compare the gaps with)"
        if self.every_seed:
            return f"holds on every one of {self.seeds} seeds"
        return "holds on the means only, not on every seed (within the spread between seeds)"


Cell = Tuple[str, str]


def _row(rows: Sequence[Dict], network: str, test: str) -> Optional[Dict]:
    return next((row for row in rows if row["network"] == network and row["test"] == test), None)


def _per_seed(row: Dict) -> Dict[Cell, List[float]]:
    runs = row["results"] if isinstance(row["results"], list) else [row["results"]]
    return {
        (d, level): [100 * r[d]["plain"][level]["map"] for r in runs] for d in DATASETS for level in REPORTED_LEVELS
    }


def _seed_gaps(win: List[float], other: List[float]) -> List[float]:
    """Winner minus other run by run: seed by seed, or against the side that has one run."""
    if len(win) == len(other):
        return [a - b for a, b in zip(win, other, strict=True)]
    if len(other) == 1 or len(win) == 1:
        return [a - b for a in win for b in other]
    return [min(win) - max(other)]


def _best_per_seed(group: Sequence[Dict[Cell, List[float]]], cell: Cell) -> List[float]:
    """A group's best mAP of ``cell`` seed by seed (rows of one set of seeds); rows of unequal
    seeds: the runs of its best row on the mean."""
    runs = [values[cell] for values in group]
    if len({len(r) for r in runs}) == 1:
        return [max(seed) for seed in zip(*runs, strict=True)]
    return max(runs, key=lambda r: float(np.mean(r)))


def _compare(claim: str, comparison: str, winners: Dict[str, Dict], others: Dict[str, Dict]) -> Finding:
    """The best of ``winners`` (label -> row) against the best of ``others``, cell by cell."""
    win = {label: _per_seed(row) for label, row in winners.items()}
    rest = {label: _per_seed(row) for label, row in others.items()}
    cells = [(d, level) for d in DATASETS for level in REPORTED_LEVELS]
    gaps, every_seed = [], True
    for cell in cells:
        best = max(win.values(), key=lambda values: float(np.mean(values[cell])))[cell]
        other = max(rest.values(), key=lambda values: float(np.mean(values[cell])))[cell]
        gaps.append(float(np.mean(best) - np.mean(other)))
        # each seed's best winner against each seed's best other, whichever rows they are
        seed_gaps = _seed_gaps(_best_per_seed(list(win.values()), cell), _best_per_seed(list(rest.values()), cell))
        every_seed &= all(gap > 0 for gap in seed_gaps)
    medium = {
        label: " / ".join(f"{np.mean(values[(d, REPORTED_LEVELS[0])]):.1f}" for d in DATASETS)
        for label, values in {**win, **rest}.items()
    }
    evidence = "; ".join(f"{label} {values}" for label, values in medium.items())
    evidence += " (Medium, " + " / ".join(DATASETS) + ")"
    seeds = max(len(values[cells[0]]) for values in win.values())
    return Finding(claim, comparison, all(gap > 0 for gap in gaps), evidence, tuple(gaps), seeds, every_seed)


def _student_modes(rows: Sequence[Dict], student_arch: str) -> List[str]:
    """The recipes of the students in the table (``student <arch> (<recipe>)`` rows), in order."""
    prefix = f"student {student_arch} ("
    found = [row["network"][len(prefix) : -1] for row in rows if row["network"].startswith(prefix)]
    return list(dict.fromkeys(found))


def paper_findings(rows: Sequence[Dict], student_arch: str, teacher_arch: str) -> List[Finding]:
    """The comparisons the demo's table allows (a student mode that was not run drops the
    findings that need it)."""

    def student(mode: str, test: str) -> Optional[Dict]:
        return _row(rows, f"student {student_arch} ({mode})", test)

    teacher = _row(rows, f"teacher {teacher_arch} (std)", "symmetric")  # an ImageNet-started one only
    findings = []
    modes = _student_modes(rows, student_arch)
    asym = {m: student(m, "asymmetric") for m in modes}
    sym = {m: student(m, "symmetric") for m in ("reg", *METRIC_LEARNING)}
    others_asym = {f"{m} asym": row for m in modes if m != "reg" and (row := asym[m]) is not None}
    learning_sym = {f"{m} sym": row for m in METRIC_LEARNING if (row := sym[m]) is not None}
    reg_asym, reg_sym = asym.get("reg"), sym["reg"]
    if reg_asym is not None and others_asym:
        findings.append(
            _compare(
                "(1) plain regression works best in asymmetric testing",
                "asymmetric: reg beats " + " and ".join(m.split()[0] for m in others_asym),
                {"reg asym": reg_asym},
                others_asym,
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
        f"{f.claim}: {f.verdict} ({f.comparison}, on the means of "
        f"{sum(g > 0 for g in f.gaps)} of {len(f.gaps)} test set x level cells; {f.evidence})"
        for f in findings
    ]
