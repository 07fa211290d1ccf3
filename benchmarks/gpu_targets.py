"""The CUDA path's targets, judged from a record of benchmarks/gpu.py (no torch needed).

    python benchmarks/gpu_targets.py benchmarks/results/gpu-h200-2026-12-04.json

Correct: every row's descriptors, by aml's default and by device decoding, and real weights
on real photos, within cosine 0.999 of the original's. Fast: aml's default at least 0.75 of
the lower of "network alone" and the device decoder's rate on every row; the first training
epoch at most 1.5 times the second; a `ts` epoch at least 5 times faster than the original's
one-tuple-at-a-time loop. A check whose numbers the record lacks is "not measured".
"""

import json
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

MIN_COSINE = 0.999
SHARE_OF_CEILING = 0.75
FIRST_OVER_SECOND = 1.5
TS_SPEEDUP = 5.0


@dataclass(frozen=True)
class Check:
    """One target: what it is, what the record measured, what is asked, and whether it is met
    (None: not measured)."""

    name: str
    measured: str
    target: str
    met: Optional[bool]

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


def _cosine(name: str, entry: Optional[Dict]) -> Check:
    if not isinstance(entry, dict) or "cos_min" not in entry:
        reason = entry["error"].split(":")[0] if isinstance(entry, dict) and "error" in entry else "-"
        return Check(name, reason, f">= {MIN_COSINE}", None if reason == "-" else False)
    return Check(name, f"{entry['cos_min']:.5f}", f">= {MIN_COSINE}", entry["cos_min"] >= MIN_COSINE)


def _rate(row: Dict) -> Check:
    name = f"{row['network']}: aml's rate"
    ceilings = {k: row[k] for k in ("network_alone", "device_decode_alone") if k in row}
    entry = row.get("aml")
    if not ceilings or not isinstance(entry, dict) or "rate" not in entry:
        return Check(name, "-", "-", None)
    ceiling = min(ceilings.values())
    of = "the lower of network alone and device decoding alone" if len(ceilings) == 2 else (
        "network alone; device decoding alone not measured")
    target = f">= {SHARE_OF_CEILING * ceiling:,.0f} img/s: {SHARE_OF_CEILING} of {of}"
    return Check(name, f"{entry['rate']:,.1f} img/s", target, entry["rate"] >= SHARE_OF_CEILING * ceiling)


def checks(results: Dict) -> List[Check]:
    """Every target of a gpu.py record's results, in the order correct, then fast.

    Args:
        results: the ``results`` of a record of benchmarks/gpu.py.

    Returns:
        The checks.
    """
    rows = [row for row in results.get("extraction", []) if "network" in row]
    out = [_cosine(f"{row['network']}: {variant} cosine", row.get(variant))
           for row in rows for variant in ("aml", "--decode device")]
    real = results.get("real_weights")
    if isinstance(real, dict):
        out += [_cosine(f"real weights: {variant} cosine", entry) for variant, entry in real.items()
                if isinstance(entry, dict)]
    out += [_rate(row) for row in rows]
    training = results.get("training")
    for run in ("teacher", "student"):
        entry = training.get(run) if isinstance(training, dict) else None
        ratio = entry.get("first_over_second") if isinstance(entry, dict) else None
        out.append(Check(f"training ({run}): first epoch / second", "-" if ratio is None else f"{ratio:.2f}",
                         f"<= {FIRST_OVER_SECOND}", None if ratio is None else ratio <= FIRST_OVER_SECOND))
    ts = results.get("ts_epoch")
    speedup = ts.get("speedup") if isinstance(ts, dict) else None
    out.append(Check("ts epoch: speed-up over the original's loop", "-" if speedup is None else f"{speedup:.1f}x",
                     f">= {TS_SPEEDUP:.0f}x", None if speedup is None else speedup >= TS_SPEEDUP))
    return out


def table(found: List[Check]) -> str:
    """The checks as a markdown table."""
    lines = ["| target | measured | asked | |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.measured} | {c.target} | {c.verdict} |" for c in found]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(table(checks(json.load(handle)["results"])), end="")
