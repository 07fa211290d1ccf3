"""benchmarks/decoding.py: a row that fails records its error, and every row is saved as it comes."""

import json

from tests.benchmarks import load_benchmark


def test_a_failing_row_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    """nvJPEG failing on one kind of file lost the whole record (written once, at the end)."""
    bench = load_benchmark("decoding")
    real = bench.decode_batch

    monkeypatch.setattr(bench, "KINDS", {k: bench.KINDS[k] for k in ("jpeg 4:2:0", "png")})
    calls = []

    def second_fails(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")
        return real(*args)

    monkeypatch.setattr(bench, "decode_batch", second_fails)
    bench.main(["--json", str(tmp_path / "decoding.json")])
    rows = json.loads((tmp_path / "decoding.json").read_text())["results"]
    assert len(rows) == 4 and rows[1]["error"] == "RuntimeError: simulated failure"
    assert all("max_abs" in row for i, row in enumerate(rows) if i != 1)
