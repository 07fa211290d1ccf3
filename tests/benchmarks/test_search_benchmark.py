"""benchmarks/search.py: aml's blocked search over a distractor store scores the queries as the
original's search of everything in memory does."""

import json
import subprocess
import sys

import pytest

from tests.benchmarks import ROOT


def test_the_blocked_search_scores_as_the_originals_search_of_everything(tmp_path):
    record = tmp_path / "search.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "search.py"), "--distractors", "3000", "--dim", "16",
               "--queries", "4", "--database", "100", "--shard-size", "1000", "--folder", str(tmp_path / "store"),
               "--methods", "blocked,numpy", "--json", str(record)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "failed" not in done.stdout, done.stdout + done.stderr
    methods = {row["method"]: row for row in json.loads(record.read_text())["results"]["methods"]}
    assert set(methods) == {"blocked", "numpy"}
    assert 0 < methods["blocked"]["map_medium"] == pytest.approx(methods["numpy"]["map_medium"], abs=1e-6)
