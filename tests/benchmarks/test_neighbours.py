"""benchmarks/neighbours.py: both ways find the same neighbours, and the record holds both times."""

import json

from tests.benchmarks import load_benchmark


def test_the_neighbour_benchmark_times_both_ways(tmp_path):
    bench = load_benchmark("neighbours")
    results = bench.main(["--images", "300", "--dim", "16", "--repeats", "1", "--json", str(tmp_path / "n.json")])
    record = json.loads((tmp_path / "n.json").read_text())
    assert set(record["results"]) == set(results) == {"top k (nearest)", "whole rows sorted"}
    assert all(seconds > 0 for seconds in results.values()) and record["settings"]["images"] == 300
