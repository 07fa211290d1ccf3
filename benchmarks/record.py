"""Where a benchmark puts its numbers: ``benchmarks/results/<name>.json``, with the machine,
the versions and the command (``aml.reports.provenance``), so that the docs' tables and plots
(``docs/generate.py``) are made from files and every number can be traced to its run."""

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional

from aml.reports.provenance import provenance
from aml.utils.atomic import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def add_json_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """Add ``--json FILE`` (default ``benchmarks/results/<name>.json``; ``''`` writes nothing)."""
    parser.add_argument("--json", default=str(RESULTS / f"{name}.json"),
                        help=f"where the numbers go (default: benchmarks/results/{name}.json; '' for none)")


def write_record(path: Optional[str], name: str, settings: Dict[str, Any], results: Any,
                 device: Optional[str] = None) -> Optional[Path]:
    """Write ``{"benchmark", "provenance", "settings", "results"}`` to ``path`` atomically (nothing
    when ``path`` is empty); returns the file written. ``device`` (else the settings' own) is
    what the numbers were measured on: a GPU is recorded only for a CUDA one (`provenance`)."""
    if not path:
        return None
    measured_on = device or settings.get("device")
    record = {"benchmark": name, "provenance": provenance(device=measured_on), "settings": settings,
              "results": results}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda out: out.write((json.dumps(record, indent=1) + "\n").encode()))
    return target
