"""benchmarks/search.py: aml's blocked search over a distractor store scores the queries as the
original's search of everything in memory does."""

import json
import sys

import pytest

from tests.benchmarks import load_benchmark


def test_the_blocked_search_scores_as_the_originals_search_of_everything(tmp_path, monkeypatch, capsys):
    """The benchmark's own process here (each method runs in a process of its own, as it measures them)."""
    record = tmp_path / "search.json"
    monkeypatch.setattr(sys, "argv", [
        "search.py", "--distractors", "3000", "--dim", "16", "--queries", "4", "--database", "100", "--shard-size",
        "1000", "--folder", str(tmp_path / "store"), "--methods", "blocked,numpy", "--json", str(record)])
    load_benchmark("search").main()
    out = capsys.readouterr().out
    assert "failed" not in out, out
    methods = {row["method"]: row for row in json.loads(record.read_text())["results"]["methods"]}
    assert set(methods) == {"blocked", "numpy"}
    assert 0 < methods["blocked"]["map_medium"] == pytest.approx(methods["numpy"]["map_medium"], abs=1e-6)
