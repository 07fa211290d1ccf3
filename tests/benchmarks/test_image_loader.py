"""benchmarks/image_loader.py runs through at a tiny size and reports every decoding's chunks."""

import json

from aml.descriptors.extraction import DECODINGS
from tests.benchmarks import load_benchmark


def test_the_loader_cost_benchmark_reports_one_image_a_message_and_each_decodings_chunk(tmp_path):
    bench = load_benchmark("image_loader")
    rows = bench.main(["--images", "10", "--image-size", "64", "--workers", "1", "--repeats", "1",
                       "--json", str(tmp_path / "loader.json")])
    assert list(rows) == ["device", "workers", "pil"]
    for name, by_chunk in rows.items():
        assert sorted(by_chunk, key=int) == [str(c) for c in sorted({1, DECODINGS[name].chunk})]
        assert all(0 < cost["min"] <= cost["median"] <= cost["max"] for cost in by_chunk.values())
    assert "8" in rows["device"]
    assert json.loads((tmp_path / "loader.json").read_text())["results"] == rows
