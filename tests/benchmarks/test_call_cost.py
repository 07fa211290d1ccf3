"""benchmarks/call_cost.py runs through at a tiny size and reports every part of a call's cost."""

from tests.benchmarks import load_benchmark


def test_the_call_cost_benchmark_times_the_load_the_fold_the_workers_start_and_whole_calls(tmp_path):
    bench = load_benchmark("call_cost")
    rows = bench.main(["--archs", "resnet18", "--workers", "1", "--repeats", "1", "--device", "cpu",
                       "--json", str(tmp_path / "cost.json")])
    assert list(rows["resnet18"]) == ["load", "fold", "processes 1", "threads 1", "call, no worker", "call, 8 threads asked",
                                      "call, 8 processes asked"]
    assert all(0 < seconds < 30 for seconds in rows["resnet18"].values())
    assert (tmp_path / "cost.json").is_file()


def test_a_measurement_that_fails_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    """One failing part (a loader that cannot start) lost every number (written once, at the end)."""
    import json

    bench = load_benchmark("call_cost")

    def fails(*args):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(bench, "first_image", fails)
    rows = bench.main(["--archs", "resnet18", "--workers", "1", "--repeats", "1", "--device", "cpu",
                       "--json", str(tmp_path / "cost.json")])
    assert rows["resnet18"]["threads 1"] == "RuntimeError: simulated failure"
    assert isinstance(rows["resnet18"]["call, no worker"], float)
    assert json.loads((tmp_path / "cost.json").read_text())["results"] == rows
