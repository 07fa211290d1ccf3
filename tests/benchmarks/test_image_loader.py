"""benchmarks/image_loader.py runs through at a tiny size and reports every decoding's workers."""

import json

from tests.benchmarks import load_benchmark


def test_the_loader_cost_benchmark_reports_processes_for_every_decoding_and_threads_for_devices(tmp_path):
    bench = load_benchmark("image_loader")
    rows = bench.main(["--images", "10", "--image-size", "64", "--workers", "1", "--repeats", "1",
                       "--json", str(tmp_path / "loader.json")])
    assert {name: list(by_kind) for name, by_kind in rows.items()} == {
        "device": ["processes", "threads"], "workers": ["processes"], "pil": ["processes"]}
    for by_kind in rows.values():
        for cost in by_kind.values():
            assert list(cost) == ["thread_us", "process_us", "rate"]
            assert all(0 < value["min"] <= value["median"] <= value["max"] for value in cost.values())
    assert json.loads((tmp_path / "loader.json").read_text())["results"] == rows
