"""benchmarks/record.py: a record names the GPU only where its numbers were measured on one."""

import json

import torch

from tests.benchmarks import load_benchmark


def test_a_cpu_benchmark_on_a_gpu_machine_records_no_accelerator(tmp_path, monkeypatch):
    """The int8, store-memory and extraction benchmarks run on the CPU, and were labelled with
    the machine's GPU (their settings name no device)."""
    record = load_benchmark("record")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    record.write_record(str(tmp_path / "cpu.json"), "x", {}, {}, device="cpu")
    record.write_record(str(tmp_path / "gpu.json"), "x", {"device": "cuda"}, {})
    assert "accelerator" not in json.loads((tmp_path / "cpu.json").read_text())["provenance"]
    assert json.loads((tmp_path / "gpu.json").read_text())["provenance"]["accelerator"].startswith("a GPU (CUDA")
