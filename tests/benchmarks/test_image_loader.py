"""benchmarks/image_loader.py runs through at a tiny size and reports every decoding's workers."""

import json

from aml.descriptors.extraction import DECODINGS

from tests.benchmarks import load_benchmark


def test_the_loader_cost_benchmark_reports_processes_and_threads_for_every_decoding(tmp_path):
    bench = load_benchmark("image_loader")
    rows = bench.main(["--images", "10", "--image-size", "64", "--workers", "1", "--repeats", "1",
                       "--json", str(tmp_path / "loader.json")])
    assert {name: list(by_kind) for name, by_kind in rows.items()} == {
        name: ["processes", "threads"] for name in ("device", "workers", "pil")}
    for by_kind in rows.values():
        for cost in by_kind.values():
            assert list(cost) == ["thread_us", "process_us", "rate"]
            assert all(0 < value["min"] <= value["median"] <= value["max"] for value in cost.values())
    record = json.loads((tmp_path / "loader.json").read_text())
    assert record["results"] == rows
    assert record["settings"]["workers_as"] == {
        name: "threads" if decoding.threads else "processes" for name, decoding in DECODINGS.items()}
