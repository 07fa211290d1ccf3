"""The demo pipeline end to end with tiny settings (the real one is `make demo`)."""

import pytest

from aml.demo import format_table, main, run_demo

TINY = dict(image_size=64, teacher_epochs=1, student_epochs=1, query_size=16, pool_size=32, workers=0,
            student_modes=("reg",), quiet=True)


def test_demo_runs_end_to_end_and_prints_the_same_table_twice(synth_root, capsys):
    rows = run_demo(str(synth_root), **TINY)
    assert [(r["network"], r["test"]) for r in rows] == [
        ("teacher resnet18 (std)", "symmetric"), ("student mobilenet_v2 untrained", "asymmetric"),
        ("student mobilenet_v2 (reg)", "symmetric"), ("student mobilenet_v2 (reg)", "asymmetric")]
    first = capsys.readouterr().out
    assert "synth-oxford M" in first and "student mobilenet_v2 (reg)" in first
    assert format_table(rows).count("\n") == len(rows) + 1
    again = run_demo(str(synth_root), **TINY)
    assert format_table(again) == format_table(rows) and format_table(rows) in first
    markdown = (synth_root / "demo" / "results.md").read_text()
    assert "| student mobilenet_v2 (reg) | asymmetric | " in markdown and markdown.count("\n| ") == len(rows) + 1
    from PIL import Image

    with Image.open(synth_root / "demo" / "results.png") as chart:
        assert chart.format == "PNG" and chart.size[0] >= 600


def test_table_shows_mean_and_spread_over_seeds():
    def result(medium, hard):
        level = {"medium": {"map": medium}, "hard": {"map": hard}}
        return {d: {"plain": level} for d in ("synth-oxford", "synth-paris")}

    rows = [{"network": "teacher", "test": "symmetric", "results": [result(0.30, 0.10), result(0.40, 0.10)]}]
    line = format_table(rows).splitlines()[-1]
    assert line.split()[2:6] == ["35.00", "±", "7.07", "10.00"]
    from aml.demo import markdown_table

    assert markdown_table(rows).splitlines()[-1] == "| teacher | symmetric | 35.00 ± 7.07 | 10.00 ± 0.00 | 35.00 ± 7.07 | 10.00 ± 0.00 |"


def test_demo_refuses_unknown_student_modes_and_seed_counts(capsys):
    with pytest.raises(SystemExit):
        main(["--student-modes", "reg,contr"])
    assert "unknown ['contr']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
    assert "argument --seeds: must be a positive integer" in capsys.readouterr().err
