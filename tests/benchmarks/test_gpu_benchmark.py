"""benchmarks/gpu.py runs on the CPU at a small size, so that it never rots, and never aborts."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from aml.descriptors.extraction import NonFiniteDescriptors
from tests.benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def docs_generate():
    """docs/generate.py as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

SMALL = ["--device", "cpu", "--images", "6", "--image-size", "64", "--tuples", "6", "--workers", "0",
         "--no-cold-start", "--no-training"]


def test_the_gpu_benchmark_runs_small_on_the_cpu(tmp_path, capsys):
    bench = load_benchmark("gpu")
    results = bench.main(SMALL + ["--networks", "mobilenet_v2 -> 512,mobilenet_v2 -> 512 (3 scales)",
                                  "--json", str(tmp_path / "gpu.json")])
    out = capsys.readouterr().out
    assert "| mobilenet_v2 -> 512 |" in out and "| mobilenet_v2 -> 512 (3 scales) |" in out and "ts epoch of 6" in out
    rows = results["extraction"]
    assert [r["network"] for r in rows] == ["mobilenet_v2 -> 512", "mobilenet_v2 -> 512 (3 scales)"]
    for row, variants in zip(rows, (bench.VARIANTS, bench.EVERY_ROW)):  # every variant on the first row
        assert row["original"] > 0 and row["network_alone"] > 0 and row["decode_alone"] > 0
        assert row["device_decode_alone"] > 0  # the decoder's ceiling of the targets
        assert row["device_decode_resized_alone"] > 0  # and with every image resized on the device
        assert row["device_decode_mixed_alone"] > 0  # from sources of many sizes
        assert set(variants) <= set(row)
        for variant in variants:  # on the CPU: fp32; nvJPEG's stand-in is libjpeg
            cell = row[variant]
            assert cell["rate"] > 0 and cell["cold_rate"] > 0 and 0 < cell["one_image_s"] < 60 and cell["cos_min"] > 0.999, (variant, cell)
    assert results["ts_epoch"]["original_s"] > 0 and results["ts_epoch"]["fast_s"] > 0
    assert "| mobilenet_v2 -> 512: aml's rate |" in out and "| ts epoch: speed-up over the original's loop |" in out
    record = json.loads((tmp_path / "gpu.json").read_text())  # what docs/generate.py reads
    assert record["benchmark"] == "gpu" and record["results"]["extraction"] == json.loads(json.dumps(rows))
    assert record["provenance"]["torch"] == torch.__version__ and record["provenance"]["command"].startswith("python")
    assert record["settings"]["images"] == 6 and "json" not in record["settings"]
    generate = docs_generate()  # the docs' table: a column for every ceiling the rows record
    header = next(line for line in generate._gpu_extraction(record).splitlines() if line.startswith("| network |"))
    assert header == "| " + " | ".join(["network", "the original's loop", *bench.VARIANTS,
                                        *generate.GPU_CEILINGS.values()]) + " |"
    for row in record["results"]["extraction"]:  # a record of before the device decoder's ceilings
        for key in list(row):
            if key.startswith("device_decode"):
                del row[key]
    header = next(line for line in generate._gpu_extraction(record).splitlines() if line.startswith("| network |"))
    assert header.endswith("| network alone | decoding alone |"), header


def test_a_failing_row_or_section_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("gpu")
    real = bench.extraction_row

    def failing(args, name, *rest):
        if name == "mobilenet_v2 -> 2048":
            raise NonFiniteDescriptors("the network produced NaN (simulated)")
        return real(args, name, *rest)

    monkeypatch.setattr(bench, "extraction_row", failing)
    (tmp_path / "photos").mkdir()  # no photo in it: the real-weights section fails
    results = bench.main(SMALL + ["--no-variants", "--tuples", "0", "--photos", str(tmp_path / "photos"),
                                  "--networks", "mobilenet_v2 -> 2048,mobilenet_v2 -> 512",
                                  "--json", str(tmp_path / "gpu.json")])
    first, second = results["extraction"]
    assert first["network"] == "mobilenet_v2 -> 2048" and "NaN (simulated)" in first["error"]
    assert second["aml"]["rate"] > 0
    assert "no .jpg or .png photo" in results["real_weights"]["error"]
    saved = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert saved["extraction"][0]["error"] == first["error"] and "seconds" in saved
    assert "NaN (simulated)" in capsys.readouterr().out


def test_a_ceiling_that_fails_keeps_the_rows_variants(tmp_path, monkeypatch):
    """nvJPEG failing in the decoder-alone measurement replaced a row's timed variants by its error."""
    bench = load_benchmark("gpu")
    real = bench.decode_alone

    def device_fails(net, paths, image_size, device, workers, decode):
        if decode == "device":
            raise RuntimeError("nvjpeg: simulated failure")
        return real(net, paths, image_size, device, workers, decode)

    monkeypatch.setattr(bench, "decode_alone", device_fails)
    results = bench.main(SMALL + ["--tuples", "0", "--decode", "pil", "--networks", "mobilenet_v2 -> 512",
                                  "--json", str(tmp_path / "gpu.json")])
    row = results["extraction"][0]
    assert row["aml"]["rate"] > 0 and row["decode_alone"] > 0 and "device_decode_alone" not in row
    assert row["device_decode_alone_error"] == "RuntimeError: nvjpeg: simulated failure"
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert "error: RuntimeError" in docs_generate()._gpu_extraction(record)  # the docs' table shows it


def test_a_section_past_the_budget_is_left_out(tmp_path):
    results = load_benchmark("gpu").main(SMALL + ["--budget", "0", "--profile", "--json", str(tmp_path / "gpu.json")])
    assert "profile" in results["skipped"] and "ts_epoch" in results["skipped"] and not results["extraction"]


def test_the_cold_start_probe_times_a_first_and_a_second_call():
    bench = load_benchmark("gpu")
    net = __import__("aml.networks", fromlist=["build_network"]).build_network("squeezenet1_1", pretrained=False)
    row = bench._probe(net.eval(), torch.device("cpu"), bench.PROBES["contiguous fp32"], [(1, 3, 40, 32)], train=False)
    assert row["first_s"] > 0 and row["steady_s"] > 0 and row["shapes"] == 1
    table = bench.cold_start_table({"inference": {"squeezenet1_1": {"contiguous fp32": row}}, "training": {}})
    assert "| squeezenet1_1 |" in table and f"{row['first_s']:.2f} / {row['steady_s']:.3f}" in table


def test_the_cold_start_rows_warm_the_device_before_their_first_probe(monkeypatch):
    """The first probe's "first call" paid the process's one-time costs (cuDNN's handle, its
    lazily loaded kernels): the rows favoured every probe but the defaults, which run first."""
    bench = load_benchmark("gpu")
    calls = []
    monkeypatch.setattr(bench, "warm_up_device", lambda device: calls.append("warm"))
    monkeypatch.setattr(bench, "_probe", lambda *args, **kwargs: calls.append("probe") or {})
    monkeypatch.setattr(bench, "build_network", lambda *args, **kwargs: torch.nn.Linear(1, 1))
    monkeypatch.setattr(bench, "inference_copy", lambda net: net)
    bench.cold_start_rows(__import__("argparse").Namespace(image_size=64), torch.device("cpu"))
    assert calls[0] == "warm" and calls.count("warm") == 1 and "probe" in calls


def test_the_device_warm_up_runs_each_precision_on_the_cpu(monkeypatch):
    entered, autocast = [], torch.autocast

    def recording(device_type, dtype=None, enabled=True):
        entered.append((device_type, dtype, enabled))
        return autocast(device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(torch, "autocast", recording)
    load_benchmark("gpu").warm_up_device(torch.device("cpu"))
    assert entered == [("cpu", torch.bfloat16, False), ("cpu", torch.float16, True), ("cpu", torch.bfloat16, True)]


def test_the_training_rows_time_two_epochs_of_the_getting_started_flow(tmp_path, monkeypatch):
    bench = load_benchmark("gpu")
    monkeypatch.setattr(bench, "SYNTHETIC", ["--train-landmarks", "6", "--val-landmarks", "2", "--views", "4",
                                             "--test-landmarks", "2", "--distractors", "0", "--quiet"])
    monkeypatch.setattr(bench, "TEACHER_RUN", ["-a", "squeezenet1_1", "--not-pretrained", "-m", "std", "-qs", "8",
                                               "-ps", "16", "-nn", "2", "-b", "4", "--batch-forward"])
    monkeypatch.setattr(bench, "STUDENT_RUN", ["-a", "squeezenet1_1", "--not-pretrained", "-m", "reg", "-ps", "8",
                                               "-b", "4", "--batch-forward"])
    args = bench.parse_args(["--device", "cpu", "--workers", "0", "--train-size", "32"])
    kept = []
    rows = bench.training_rows(args, tmp_path, bench.Budget(120), lambda so_far: kept.append(dict(so_far)))
    for run in ("teacher", "student"):
        assert len(rows[run]["epochs_s"]) == 2 and all(s > 0 for s in rows[run]["epochs_s"]), rows
        assert rows[run]["first_over_second"] > 0
    assert list(kept[0]) == ["teacher"]  # saved before the student started


def test_the_training_rows_flags_are_main_pys_and_their_weights_travel(tmp_path, monkeypatch):
    """The real training rows (pretrained trunks, the getting-started flags) run only on a GPU
    machine: their flags parse here, and their ImageNet weights are among what `make
    gpu-assets` gathers, where find_weights finds them through $AML_WEIGHTS_PATH."""
    from aml.cli import synthetic, train
    from aml.networks.imagenet import find_weights

    bench, assets = load_benchmark("gpu"), load_benchmark("gpu_assets")
    synthetic.build_parser().parse_args(["--data-root", str(tmp_path), *bench.SYNTHETIC])
    args = bench.parse_args(["--device", "cpu", "--workers", "0"])
    configs = [train.config_from_arguments(train.build_parser().parse_args(
        bench.main_py_flags(args, tmp_path, run, name, extra)))
        for run, name, extra in ((bench.TEACHER_RUN, "teacher", ()),
                                 (bench.STUDENT_RUN, "student", ("--teacher", "teacher.pth.tar")))]
    archs = [config.arch for config in configs]
    assert archs == ["efficientnet_lite0", "mobilenet_v2"] and all(c.pretrained for c in configs)
    assert set(archs) <= set(assets.ARCHITECTURES)
    monkeypatch.setattr(assets, "sample_photos", lambda: dict(list(__import__(
        "aml.data.photos", fromlist=["sample_photos"]).sample_photos().items())[:2]))
    assets.gather(tmp_path / "gpu-assets")
    assert len(list((tmp_path / "gpu-assets" / "photos").glob("*.jpg"))) == 2
    monkeypatch.setenv("AML_WEIGHTS_PATH", str(tmp_path / "gpu-assets" / "networks"))
    for arch in archs:
        path, _ = find_weights(arch, data_root=tmp_path / "empty", download=False)
        assert path.parent == tmp_path / "gpu-assets" / "networks"


def test_a_run_stopped_during_the_student_keeps_the_teachers_row(tmp_path, monkeypatch):
    """gpu_check.sh stops the benchmark at its time limit: what ended before is in the JSON."""
    import subprocess
    from types import SimpleNamespace

    bench = load_benchmark("gpu")

    def main_py(args, folder, run, name, timeout, extra=()):
        if name == "student":
            raise KeyboardInterrupt  # any stop after the teacher's row was saved
        return {"epochs_s": [3.0, 2.0], "checkpoint": "teacher.pth.tar"}

    monkeypatch.setattr(bench, "_main_py", main_py)
    monkeypatch.setattr(bench, "subprocess", SimpleNamespace(run=lambda *a, **k: subprocess.CompletedProcess(a, 0)))
    with pytest.raises(KeyboardInterrupt):
        bench.main(SMALL[:-1] + ["--networks=", "--tuples", "0", "--training", "--json", str(tmp_path / "gpu.json")])
    saved = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert saved["training"] == {"teacher": {"epochs_s": [3.0, 2.0], "checkpoint": "teacher.pth.tar"}}


def test_the_profile_tables_a_first_extraction_and_a_training_batch(tmp_path):
    bench = load_benchmark("gpu")
    args = bench.parse_args(SMALL + ["--profile"])
    paths = bench.make_images(tmp_path, 6, 64)
    tables = bench.profile_rows(args, paths, torch.device("cpu"), tmp_path)
    assert list(tables) == ["first extraction", "training batch"]  # by device time too on CUDA
    assert all("aten::convolution" in table for table in tables.values()), tables
    assert "backward" in tables["training batch"].lower()


def test_the_gpu_benchmark_refuses_an_unknown_row(capsys):
    with pytest.raises(SystemExit) as refused:
        load_benchmark("gpu").main(["--networks", "alexnet", "--device", "cpu"])
    assert refused.value.code == 2 and "unknown network rows ['alexnet']" in capsys.readouterr().err


def test_the_sync_row_counts_the_batches_an_extraction_makes(tmp_path):
    """Batches of 32 per shape: 42 landscape and 22 portrait images make 3, not 64 / 32."""
    bench = load_benchmark("gpu")
    from PIL import Image

    paths = []
    for k in range(64):
        size = (80, 60) if k < 42 else (60, 80)
        paths.append(str(tmp_path / f"{k}.jpg"))
        Image.new("RGB", size).save(paths[-1])
    assert bench.batch_count(paths, 64) == 3


def test_the_sync_row_tells_a_calls_syncs_from_a_batchs(tmp_path):
    """One call's count (4 syncs for 3 batches: the constants' copies and the copy back among
    them) read as one sync per batch; two calls of 32 and 128 images tell them apart."""
    bench = load_benchmark("gpu")
    from PIL import Image

    paths = []
    for k in range(128):
        paths.append(str(tmp_path / f"{k}.jpg"))
        Image.new("RGB", (80, 60)).save(paths[-1])
    fixed, per_batch = 4, 0  # what the loop should do: syncs once per call, none per batch
    rows = bench.extraction_syncs(lambda images: fixed + per_batch * bench.batch_count(images, 64), paths, 64)
    assert rows["extraction_batches"] == {"small": 1, "large": 4} and rows["extraction_syncs_per_batch"] == 0
    rows = bench.extraction_syncs(lambda images: 3 + bench.batch_count(images, 64), paths, 64)
    assert rows["extraction_syncs"] == {"small": 4, "large": 7} and rows["extraction_syncs_per_batch"] == 1


def test_the_original_ways_ts_epoch_pads_no_batch(tmp_path):
    """The 'original way' baseline of the ts epoch padded its forwards and its mining's batches
    to fixed sizes on CUDA (a Trainer's default there): a baseline that is not the original's."""
    from argparse import Namespace

    from PIL import Image

    bench = load_benchmark("gpu")
    paths = []
    for k in range(6):
        paths.append(str(tmp_path / f"{k}.jpg"))
        Image.new("RGB", (80, 60), (k * 40, 0, 0)).save(paths[-1])
    args = Namespace(image_size=64, tuples=6, decode="auto", workers=0)
    original = bench._ts_trainer(args, paths, torch.device("cpu"), tmp_path / "orig", fast=False)
    fast = bench._ts_trainer(args, paths, torch.device("cpu"), tmp_path / "fast", fast=True)
    assert original.extraction.fixed_batches is False and not original.fixed_batches
    assert fast.extraction.fixed_batches is None  # aml's default: padded on CUDA
