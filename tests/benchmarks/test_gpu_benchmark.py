"""benchmarks/gpu.py runs on the CPU at a small size, so that it never rots."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_runs_small_on_the_cpu(tmp_path, capsys):
    bench = load_benchmark()
    results = bench.main(["--device", "cpu", "--images", "6", "--image-size", "64", "--tuples", "6", "--workers", "0",
                          "--networks", "mobilenet_v2 -> 512,mobilenet_v2 -> 512 (3 scales)",
                          "--json", str(tmp_path / "gpu.json")])
    out = capsys.readouterr().out
    assert "| mobilenet_v2 -> 512 |" in out and "| mobilenet_v2 -> 512 (3 scales) |" in out and "ts epoch of 6" in out
    rows = results["extraction"]
    assert [r["network"] for r in rows] == ["mobilenet_v2 -> 512", "mobilenet_v2 -> 512 (3 scales)"]
    for row in rows:
        assert row["original"] > 0 and row["network_alone"] > 0 and row["decode_alone"] > 0
        assert set(bench.VARIANTS) <= set(row)
        for variant in bench.VARIANTS:  # on the CPU: fp32; nvJPEG's stand-in is libjpeg + bicubic resizing
            assert row[variant]["rate"] > 0 and row[variant]["cos_min"] > 0.999, (variant, row[variant])
    assert results["ts_epoch"]["original_s"] > 0 and results["ts_epoch"]["fast_s"] > 0
    record = json.loads((tmp_path / "gpu.json").read_text())  # what docs/generate.py reads
    assert record["benchmark"] == "gpu" and record["results"]["extraction"] == json.loads(json.dumps(rows))
    assert record["provenance"]["torch"] == torch.__version__ and record["provenance"]["command"].startswith("python")
    assert record["settings"]["images"] == 6 and "json" not in record["settings"]


def test_the_gpu_benchmark_refuses_an_unknown_row():
    with pytest.raises(SystemExit):
        load_benchmark().main(["--networks", "alexnet", "--device", "cpu"])
