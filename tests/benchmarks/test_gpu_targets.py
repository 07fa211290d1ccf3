"""benchmarks/gpu_targets.py: the CUDA path's targets judged from a gpu.py record, on hand-made numbers."""

from tests.benchmarks import load_benchmark

gpu_targets = load_benchmark("gpu_targets")


def by_name(results):
    return {check.name: check for check in gpu_targets.checks(results)}


def test_the_rate_target_is_three_quarters_of_the_lower_ceiling():
    row = {"network": "net", "aml": {"rate": 750.0, "cos_min": 0.9995}, "--decode device": {"error": "OSError: x"},
           "network_alone": 2000.0, "device_decode_alone": 1000.0}
    found = by_name({"extraction": [row]})
    rate = found["net: aml's rate"]
    assert rate.met is True and rate.target.startswith(">= 750 img/s: 0.75 of the lower of")
    assert by_name({"extraction": [dict(row, aml={"rate": 749.9, "cos_min": 0.9995})]})["net: aml's rate"].met is False
    without_decoder = {k: v for k, v in row.items() if k != "device_decode_alone"}
    alone = by_name({"extraction": [without_decoder]})["net: aml's rate"]
    assert alone.met is False and ">= 1,500 img/s" in alone.target and "not measured" in alone.target
    assert found["net: aml cosine"].met is True and found["net: aml cosine"].measured == "0.99950"
    assert found["net: --decode device cosine"].met is False and found["net: --decode device cosine"].measured == "OSError"


def test_cosines_epochs_and_the_ts_epoch_are_judged_and_missing_numbers_are_not_measured():
    results = {
        "extraction": [{"network": "net", "aml": {"rate": 1.0, "cos_min": 0.9989}}],
        "real_weights": {"photos": 15, "aml": {"cos_min": 0.9999}, "--decode device": {"cos_min": 0.998}},
        "training": {"teacher": {"first_over_second": 1.5}, "student": {"error": "RuntimeError: boom"}},
        "ts_epoch": {"speedup": 4.99},
    }
    found = by_name(results)
    assert found["net: aml cosine"].met is False
    assert found["net: --decode device cosine"].met is None
    assert found["net: aml's rate"].met is None  # no ceiling in the row
    assert found["real weights: aml cosine"].met is True and found["real weights: --decode device cosine"].met is False
    assert found["training (teacher): first epoch / second"].met is True
    assert found["training (student): first epoch / second"].met is None
    assert found["ts epoch: speed-up over the original's loop"].met is False
    assert [c.verdict for c in gpu_targets.checks({})] == ["not measured"] * 3
    assert gpu_targets.table(gpu_targets.checks(results)).count("\n") == 2 + len(found)
