"""benchmarks/image_loader.py runs through at a tiny size and reports every decoding's chunks."""

import importlib.util
import json
from pathlib import Path

from aml.descriptors.extraction import DECODINGS

ROOT = Path(__file__).resolve().parents[2]


def test_the_loader_cost_benchmark_reports_one_image_a_message_and_each_decodings_chunk(tmp_path):
    spec = importlib.util.spec_from_file_location("image_loader", ROOT / "benchmarks" / "image_loader.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--images", "10", "--image-size", "64", "--workers", "1", "--repeats", "1",
                       "--json", str(tmp_path / "loader.json")])
    assert list(rows) == ["device", "workers", "pil"]
    for name, by_chunk in rows.items():
        assert sorted(by_chunk, key=int) == [str(c) for c in sorted({1, DECODINGS[name].chunk})]
        assert all(0 < cost["min"] <= cost["median"] <= cost["max"] for cost in by_chunk.values())
    assert "8" in rows["device"]
    assert json.loads((tmp_path / "loader.json").read_text())["results"] == rows
