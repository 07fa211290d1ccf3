"""benchmarks/tuple_loader.py runs through at a tiny size and reports both loaders."""

from tests.benchmarks import load_benchmark


def test_the_loader_benchmark_times_both_loaders_for_every_size_and_worker_count(tmp_path):
    bench = load_benchmark("tuple_loader")
    rows = bench.main(["--image-sizes", "64,32", "--tuples", "2", "--workers", "0,1", "--repeats", "1",
                       "--json", str(tmp_path / "loader.json")])
    assert list(rows) == ["64", "32"] and all(list(by) == ["0", "1"] for by in rows.values())
    rates = [rate for by in rows.values() for row in by.values() for rate in row.values()]
    assert len(rates) == 8 and all(rate > 0 for rate in rates)
    assert (tmp_path / "loader.json").is_file()
