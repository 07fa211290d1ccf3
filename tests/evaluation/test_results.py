"""A test's result as the results file records it."""

import os
from pathlib import Path

from aml.evaluation import DatasetResult, SearchResult, SkippedImages
from aml.evaluation.reranking import Reranking


def test_the_report_and_the_skipped_list_are_recorded_as_absolute_paths(tmp_path, monkeypatch):
    """They were relative to the folder test.py ran in, which a results file read from elsewhere
    does not know."""
    monkeypatch.chdir(tmp_path)
    searched = SearchResult(False, Reranking(), {"medium": {"map": 0.5}})
    skipped = SkippedImages(("jpg/a.jpg",), (), Path("out/skipped_x.txt"))
    entry = DatasetResult("x", (searched,), skipped, None, Path("out/x/index.html")).record()
    assert entry["report"] == os.path.join(os.getcwd(), "out", "x", "index.html")
    assert entry["skipped"]["list"] == os.path.join(os.getcwd(), "out", "skipped_x.txt")
