"""The demo pipeline end to end with tiny settings (the real one is `make demo`)."""

import pytest

from aml.demo import format_table, main, run_demo


def test_demo_runs_end_to_end_and_prints_table(synth_root, capsys):
    rows = run_demo(str(synth_root), image_size=64, teacher_epochs=1, student_epochs=1, query_size=16,
                    pool_size=32, workers=0, student_modes=("reg",))
    assert [(r["network"], r["test"]) for r in rows] == [
        ("teacher resnet18 (std)", "symmetric"), ("student mobilenet_v2 untrained", "asymmetric"),
        ("student mobilenet_v2 (reg)", "symmetric"), ("student mobilenet_v2 (reg)", "asymmetric")]
    table = capsys.readouterr().out
    assert "synth-oxford M" in table and "student mobilenet_v2 (reg)" in table
    assert format_table(rows).count("\n") == len(rows) + 1


def test_demo_refuses_unknown_student_modes(capsys):
    with pytest.raises(SystemExit):
        main(["--student-modes", "reg,contr"])
    assert "unknown ['contr']" in capsys.readouterr().err
