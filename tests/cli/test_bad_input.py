"""Every command answers bad flags with one line naming the flag, never a traceback."""

import pytest

from aml import demo
from aml.cli import extract_features as extract_cli
from aml.cli import test as test_cli
from aml.cli import train as train_cli

TRAIN = (train_cli.main, ["--directory", "unused"])
TEST = (test_cli.main, ["-npath", "unused.pth"])
EXTRACT = (extract_cli.main, ["-npath", "unused.pth"])
DEMO = (demo.main, [])

CASES = [
    (TRAIN, ["--image-size", "0"], "argument --image-size: must be a positive integer, got '0'"),
    (TRAIN, ["--image-size", "-5"], "argument --image-size: must be a positive integer, got '-5'"),
    (TRAIN, ["-nn", "-1"], "argument --neg-num/-nn: must be an integer >= 0, got '-1'"),
    (TRAIN, ["-b", "-2"], "argument --batch-size/-b: must be a positive integer, got '-2'"),
    (TRAIN, ["-qs", "0"], "argument --query-size/-qs: must be a positive integer"),
    (TRAIN, ["--lr", "nan"], "argument --lr/--learning-rate: must be a positive finite number, got 'nan'"),
    (TRAIN, ["--lr", "inf"], "argument --lr/--learning-rate: must be a positive finite number, got 'inf'"),
    (TRAIN, ["--momentum", "1.5"], "argument --momentum: must be a number in [0, 1)"),
    (TRAIN, ["--temp", "0"], "argument --temp: must be a positive finite number"),
    (TRAIN, ["-j", "-1"], "argument --workers/-j: must be an integer >= 0"),
    (TRAIN, ["--epochs", "1.5"], "argument --epochs: must be a positive integer, got '1.5'"),
    (TRAIN, ["--seed", "-3"], "argument --seed: must be an integer >= 0"),
    (TEST, ["-imsize", "0"], "argument --image-size/-imsize: must be a positive integer"),
    (TEST, ["-ms", "[0]"], "every scale must be a number in [0.0625, 4.0]"),
    (TEST, ["-ms", "[1, -0.5]"], "every scale must be a number in [0.0625, 4.0]"),
    (TEST, ["-ms", "[1, 1e400]"], "every scale must be a number in [0.0625, 4.0]"),
    (TEST, ["-ms", "[1, 1e9]"], "every scale must be a number in [0.0625, 4.0]"),
    (TEST, ["-ms", "[1, nan]"], "is not a list of numbers"),
    (TEST, ["-ms", "[1e-3]"], "every scale must be a number in [0.0625, 4.0]"),
    (TEST, ["-ms", "[4,4,4,4,4,4,4,4,4]"], "9 scales; at most 8"),
    (TEST, ["--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (TEST, ["--report-top", "0"], "argument --report-top: must be a positive integer"),
    (TEST, ["--shard-size", "0"], "argument --shard-size: must be a positive integer"),
    (TEST, ["--distractor-dtype", "int8"], "argument --distractor-dtype: invalid choice: 'int8'"),
    (TEST, ["-d", "roxford5k+2m"], "unknown distractor set '2m'"),
    (TRAIN, ["--dist-timeout", "0"], "argument --dist-timeout: must be a positive finite number"),
    (TEST, ["--dist-timeout", "-1"], "argument --dist-timeout: must be a positive finite number"),
    (EXTRACT, ["-imsize", "-1"], "argument --image-size/-imsize: must be a positive integer"),
    (EXTRACT, ["--shard-size", "-1"], "argument --shard-size: must be an integer >= 0"),
    (DEMO, ["--image-size", "0"], "argument --image-size: must be a positive integer"),
    (DEMO, ["--workers", "-2"], "argument --workers: must be an integer >= 0"),
    (TRAIN, ["--loss", "csd", "--mode", "ts"], "--loss csd cannot be used with --mode ts: it trains on single images "
                                               "against the teacher's view of the whole split (modes reg, reg_only_pos)"),
    (TRAIN, ["-l", "lce", "-m", "rand"], "--loss lce cannot be used with --mode rand"),
    (DEMO, ["--student-modes", "reg,csx"], "--student-modes: unknown ['csx']; choose among ['bct', 'csd', 'hvs', 'lce', "
                                           "'reg', 'ts', 'ts_self']"),
]


def bad(command, extra, capsys):
    main, base = command
    with pytest.raises(SystemExit) as info:
        main(base + extra)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command, extra, message", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_numbers_are_refused_at_parse_time(command, extra, message, capsys):
    assert message in bad(command, extra, capsys)


@pytest.mark.parametrize("command, flag", [(TRAIN, "--directory"), (TRAIN, "--data-root"), (TEST, "--data-root"),
                                           (TEST, "--report"), (EXTRACT, "--data-root"), (DEMO, "--data-root")])
def test_a_file_where_a_folder_belongs_is_refused(command, flag, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    err = bad(command, [flag, str(afile)], capsys)
    assert f"argument {flag}" in err and f"{afile} is a file, not a folder" in err
    assert afile.read_text() == "mine"


def test_results_into_a_folder_is_refused_before_anything_runs(tmp_path, capsys):
    err = bad(TEST, ["--results", str(tmp_path)], capsys)
    assert f"--results {tmp_path} is a folder; give a file name" in err
