"""benchmarks/vit_readout.py: every readout is tested off the shelf and trained, and recorded."""

import json

import pytest

from tests.benchmarks import load_benchmark

pytestmark = pytest.mark.long


def test_the_readout_benchmark_runs_its_three_readouts_and_records_them(synth_root, tmp_path):
    """The script had fallen behind the package (its settings' fields and results' shape):
    the docs' readout table could not be measured again."""
    bench = load_benchmark("vit_readout")
    record = bench.main(["--data-root", str(synth_root), "--arch", "timm:test_vit", "--seeds", "0", "--epochs", "1",
                         "--image-size", "64", "--tuples", "8", "--json", str(tmp_path / "v.json")])
    rows = json.loads((tmp_path / "v.json").read_text())["results"]["rows"]
    assert rows == record["rows"]
    assert [(r["readout"], r["pooling"]) for r in rows] == [(r, p) for r, p in bench.VARIANTS for _ in range(2)]
    assert all(0 < value <= 100 for r in rows for d in r["map"].values() for lv in d.values() for value in lv)
