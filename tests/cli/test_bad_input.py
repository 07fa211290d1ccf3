"""Every command answers bad flags with one line naming the flag, never a traceback."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aml import demo
from aml.cli import compat as compat_cli
from aml.cli import export as export_cli
from aml.cli import extract_features as extract_cli
from aml.cli import make_testset as make_testset_cli
from aml.cli import make_trainset as make_trainset_cli
from aml.cli import search as search_cli
from aml.cli import synthetic as synthetic_cli
from aml.cli import test as test_cli
from aml.cli import train as train_cli
from aml.utils.errors import AmlError, ConfigError

TRAIN = (train_cli.main, ["--directory", "unused"])
TEST = (test_cli.main, ["-npath", "unused.pth"])
EXTRACT = (extract_cli.main, ["-npath", "unused.pth"])
DEMO = (demo.main, [])
SYNTHETIC = (synthetic_cli.main, [])
INDEX = (search_cli.main, ["index", "unused/", "--store", "unused.store"])
QUERY = (search_cli.main, ["query", "unused.jpg", "--store", "unused.store", "--network", "unused.pth"])

CASES = [
    (TRAIN, ["--image-size", "0"], "argument --image-size: must be a positive integer, got '0'"),
    (TRAIN, ["--image-size", "-5"], "argument --image-size: must be a positive integer, got '-5'"),
    (TRAIN, ["-nn", "-1"], "argument --neg-num/-nn: must be an integer >= 0, got '-1'"),
    # 2**32 trained what seed 0 trains, under a run name of its own; 2**64 ended in torch's ValueError
    (TRAIN, ["--seed", "4294967296"], "argument --seed: must be an integer in [0, 2**32), got '4294967296'"),
    (TRAIN, ["--seed", str(2**64)], "argument --seed: must be an integer in [0, 2**32)"),
    (TRAIN, ["-b", "-2"], "argument --batch-size/-b: must be a positive integer, got '-2'"),
    (TRAIN, ["-qs", "0"], "argument --query-size/-qs: must be a positive integer"),
    (TRAIN, ["--lr", "nan"], "argument --lr/--learning-rate: must be a positive finite number, got 'nan'"),
    (TRAIN, ["--lr", "inf"], "argument --lr/--learning-rate: must be a positive finite number, got 'inf'"),
    (TRAIN, ["--momentum", "1.5"], "argument --momentum: must be a number in [0, 1)"),
    (TRAIN, ["--temp", "0"], "argument --temp: must be a positive finite number"),
    (TRAIN, ["--temp", "1e-30", "-l", "cross_entropy"], "--temp 1e-30: below 0.001 the logits (similarities / temp) "
                                                        "span 2e+30: the softmax is a hard maximum and the gradients "
                                                        "grow as 1/temp, so training diverges whatever --lr is; use "
                                                        "0.001 to 10 (default 0.1)"),
    (TRAIN, ["--temp", "1e30", "-l", "bct", "-m", "reg"], "--temp 1e+30: above 10 the logits (similarities / temp) "
                                                          "span only 2e-30: the softmax is nearly uniform, the loss "
                                                          "stays constant and nothing is learned"),
    (TRAIN, ["-j", "-1"], "argument --workers/-j: must be an integer >= 0"),
    (TRAIN, ["--epochs", "1.5"], "argument --epochs: must be a positive integer, got '1.5'"),
    (TRAIN, ["--seed", "-3"], "argument --seed: must be an integer in [0, 2**32)"),
    (TEST, ["-imsize", "0"], "argument --image-size/-imsize: must be a positive integer"),
    (TEST, ["-ms", "[0]"], "every scale must be a number in [0.0625, 4.0]"),
    (TEST, ["--results", ""], "argument --results: the file name is empty; give one"),
    (TEST, ["-ms", "[2**-1000]"], "an exponent must lie within -64 and 64"),
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
    (TEST, ["--qe", "0"], "argument --qe: must be a positive integer, got '0'"),
    (TEST, ["--qe", "-3"], "argument --qe: must be a positive integer, got '-3'"),
    (TEST, ["--qe", "2", "--qe-alpha", "-1"], "argument --qe-alpha: must be a finite number >= 0, got '-1'"),
    (TEST, ["--qe", "2", "--qe-alpha", "inf"], "argument --qe-alpha: must be a finite number >= 0, got 'inf'"),
    (TEST, ["--qe-alpha", "2"], "--qe-alpha 2 without --qe: give --qe K too"),
    (TEST, ["--dba", "0"], "argument --dba: must be a positive integer, got '0'"),
    (TEST, ["--dba", "5", "--dba-alpha", "-0.5"], "argument --dba-alpha: must be a finite number >= 0, got '-0.5'"),
    (TEST, ["--dba-alpha", "1"], "--dba-alpha 1 without --dba: give --dba K too"),
    (TEST, ["--dba", "5", "-d", "roxford5k+1m"], "--dba 5 with roxford5k+1m: database-side augmentation with "
                                                 "distractors would need the neighbours of every distractor"),
    (TEST, ["--superglobal", "0"], "argument --superglobal: must be a positive integer, got '0'"),
    (TEST, ["--superglobal", "400", "--sg-k", "-1"], "argument --sg-k: must be an integer >= 0, got '-1'"),
    (TEST, ["--superglobal", "400", "--sg-beta", "nan"], "argument --sg-beta: must be a finite number >= 0, got 'nan'"),
    (TEST, ["--sg-k", "5"], "--sg-k 5 without --superglobal: give --superglobal M too"),
    (TEST, ["--sg-beta", "0.3"], "--sg-beta 0.3 without --superglobal: give --superglobal M too"),
    (TEST, ["--superglobal", "9", "--sg-k", "0", "--sg-beta", "0.3"], "--sg-beta 0.3 with --sg-k 0: no neighbour is "
                                                                      "weighed; give --sg-k 1 or more"),  # ignored
    (INDEX, ["--dba", "0"], "argument --dba: must be a positive integer, got '0'"),
    (INDEX, ["--superglobal", "10"], "unrecognized arguments: --superglobal 10"),
    (INDEX, ["--dba", "2", "--dba-alpha", "nan"], "argument --dba-alpha: must be a finite number >= 0, got 'nan'"),
    (INDEX, ["--dba-alpha", "2"], "--dba-alpha 2 without --dba: give --dba K too"),
    (INDEX, ["--ivfpq", "64"], "argument --ivfpq: --ivfpq '64': two positive integers NLIST,M, e.g. 1024,64"),
    (INDEX, ["--ivfpq", "0,8"], "argument --ivfpq: --ivfpq '0,8': two positive integers NLIST,M"),
    (QUERY, ["--qe", "0"], "argument --qe: must be a positive integer, got '0'"),
    (QUERY, ["--qe", "1", "--qe-alpha", "-2"], "argument --qe-alpha: must be a finite number >= 0, got '-2'"),
    (QUERY, ["--qe-alpha", "2"], "--qe-alpha 2 without --qe: give --qe K too"),
    (QUERY, ["--superglobal", "-4"], "argument --superglobal: must be a positive integer, got '-4'"),
    (QUERY, ["--sg-beta", "0.5"], "--sg-beta 0.5 without --superglobal: give --superglobal M too"),
    (QUERY, ["--box", "nan,nan,nan,nan"], "argument --box: --box 'nan,nan,nan,nan': four finite numbers"),
    (QUERY, ["--box", "0,0,inf,5"], "argument --box: --box '0,0,inf,5': four finite numbers x1,y1,x2,y2"),
    (TEST, ["--device", "foo"], "argument --device: 'foo' is not a device; give auto, cpu, cuda or cuda:N"),
    (TRAIN, ["--device", "meta"], "argument --device: 'meta': aml runs on cpu, cuda, mps devices"),
    (EXTRACT, ["--device", "cuda:x"], "argument --device: 'cuda:x' is not a device"),
    (EXTRACT, ["-imsize", "-1"], "argument --image-size/-imsize: must be a positive integer"),
    (EXTRACT, ["--shard-size", "-1"], "argument --shard-size: must be an integer >= 0"),
    (DEMO, ["--image-size", "0"], "argument --image-size: must be a positive integer"),
    (TEST, ["-d", ",,"], "--datasets ',,' names no test set; give one or more"),  # was rc 0, nothing tested
    (TEST, ["-d", ""], "--datasets '' names no test set"),
    (SYNTHETIC, ["--image-size", "1000000000"], "argument --image-size: must be an integer from 8 to 4096"),
    (EXTRACT, ["-d", ","], "--datasets ',' names no data set; give one or more"),  # was rc 0, nothing encoded
    (EXTRACT, ["-d", "synth-sfm", "--split", ""], "--split '' names no split"),
    (TEST, ["-d", "roxford5k,rparis6k,roxford5k"], "--datasets 'roxford5k,rparis6k,roxford5k' names roxford5k twice; "
                                                   "give each test set once"),  # was tested twice
    (TEST, ["-d", "roxford5k,ROxford5k"], "--datasets 'roxford5k,ROxford5k' names roxford5k twice"),  # tested twice
    (EXTRACT, ["-d", "synth-sfm,synth-sfm"], "--datasets 'synth-sfm,synth-sfm' names synth-sfm twice"),
    # each spelling was encoded, into a file of its own that main.py's look-up never found
    (EXTRACT, ["-d", "synth-oxford,SYNTH-Oxford"], "--datasets 'synth-oxford,SYNTH-Oxford' names synth-oxford twice"),
    (EXTRACT, ["-d", "synth-sfm", "--split", "train,val,train"], "--split 'train,val,train' names train twice"),
    (DEMO, ["--student-arch", "timm:nosuch"], "--student-arch: timm:nosuch: timm"),  # was refused after the teacher
    (DEMO, ["--student-arch", "nosuch"], "--student-arch: unknown architecture 'nosuch'"),
    (DEMO, ["--workers", "-2"], "argument --workers: must be an integer >= 0"),
    (TRAIN, ["--loss", "csd", "--mode", "ts"], "--loss csd cannot be used with --mode ts: it trains on single images "
                                               "against the teacher's view of the whole split (modes reg, reg_only_pos)"),
    (TRAIN, ["-l", "lce", "-m", "rand"], "--loss lce cannot be used with --mode rand"),
    (TRAIN, ["-c", "/../elsewhere"], "--comment '/../elsewhere': it ends the run folder's name and cannot hold a path "
                                     "separator"),  # wrote history.json and curves outside --directory
    (TRAIN, ["-m", "std", "--feat-path", "t.npy"], "--feat-path: --mode std trains without a teacher"),  # was ignored
    (EXTRACT, ["-d", "synth-sfm", "--store-dtype", "float16"], "--store-dtype float16 sets the dtype of a store's "
                                                                "shards: give --shard-size N too"),  # wrote float32
    (DEMO, ["--student-modes", "reg,csx"], "--student-modes: unknown ['csx']; choose among ['bct', 'csd', 'hvs', 'lce', "
                                           "'reg', 'ts', 'ts_self']"),
    # the last student's seed past training's range was refused after the data and the teacher
    (DEMO, ["--seed", "4294967295", "--seeds", "2"], "--seed 4294967295 --seeds 2: the last student's seed, "
                                                     "4294967296, must be an integer in [0, 2**32)"),
    # flags that other flags make meaningless (arguments.IGNORED_FLAGS), all ignored without a word
    (TRAIN, ["--no-amp", "--amp-dtype", "bfloat16"], "--amp-dtype bfloat16: --no-amp, or a device other than CUDA, "
                                                     "encodes in float32; leave it out"),
    (TEST, ["--no-amp", "--amp-dtype", "bfloat16"], "--amp-dtype bfloat16: --no-amp, or a device other than CUDA"),
    (TEST, ["--device", "cpu", "--amp-dtype", "bfloat16"], "--amp-dtype bfloat16: --no-amp, or a device other than"),
    (TRAIN, ["--momentum", "0.5"], "--momentum 0.5: it is SGD's, and --optimizer adam has none; leave it out"),
    (TEST, ["--device", "cpu", "-g", "2"], "--gpu-id 2: it picks the GPU of --device auto; --device names its own"),
    (TRAIN, ["--device", "cuda:1", "-g", "3"], "--gpu-id 3: it picks the GPU of --device auto"),
    (TEST, ["--report-top", "5"], "--report-top 5: it sets what --report shows; leave it out"),
    (TEST, ["-d", "synth-oxford", "--shard-size", "64"], "--shard-size 64: only a distractor set's descriptors are "
                                                         "stored in shards (--datasets NAME+1m)"),
    (TEST, ["-d", "synth-oxford", "--distractor-dtype", "float16"], "--distractor-dtype float16: only a distractor "
                                                                    "set's descriptors are stored"),
    (QUERY[:1] + (QUERY[1][:4] + ["--onnx", "s.onnx"],), ["--device", "cuda"],
     "--device cuda: --onnx runs the student in onnxruntime on the CPU"),
    # extract_features' --shard-size writes a store for --feat-path: no distractor set concerned
    (EXTRACT, ["-d", "synth-sfm", "--shard-size", "64", "--split", ""], "--split '' names no split"),
    (QUERY[:1] + (QUERY[1][:4] + ["--onnx", "s.onnx"],), ["-j", "2"], "--workers 2: --onnx reads the query images"),
    (QUERY[:1] + (QUERY[1][:4] + ["--onnx", "s.onnx"],), ["-g", "1"], "--gpu-id 1: --onnx runs the student in "
                                                                       "onnxruntime on the CPU"),
]


def test_every_ignored_flag_rule_is_tried():
    """Each rule of IGNORED_FLAGS has a case above."""
    from aml.cli.arguments import IGNORED_FLAGS

    said = " ".join(message for _, _, message in CASES)
    assert [rule.flag for rule in IGNORED_FLAGS if f"{rule.flag} " not in said or rule.why[:20] not in said] == []


def bad(command, extra, capsys):
    main, base = command
    with pytest.raises(SystemExit) as info:
        main(base + extra)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_multiscale_list_of_thousands_of_terms_is_one_line(capsys):
    """The parser recursed per term: 5,000 of them ended in a RecursionError's traceback."""
    assert "--multiscale of 10001 characters: a list of at most 8" in bad(TEST, ["-ms", "[" + "+".join(["1"] * 5000)
                                                                                + "]"], capsys)


@pytest.mark.parametrize("command, extra, message", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_numbers_are_refused_at_parse_time(command, extra, message, capsys):
    assert message in bad(command, extra, capsys)


def test_a_test_set_with_and_without_distractors_is_two_sets_not_one_twice():
    from aml.cli.arguments import comma_names

    assert comma_names("--datasets", "roxford5k+1m,roxford5k,", "test set") == ["roxford5k+1m", "roxford5k"]


@pytest.mark.parametrize("command, flag", [(TRAIN, "--directory"), (TRAIN, "--data-root"), (TEST, "--data-root"),
                                           (TEST, "--report"), (EXTRACT, "--data-root"), (DEMO, "--data-root")])
def test_a_file_where_a_folder_belongs_is_refused(command, flag, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    err = bad(command, [flag, str(afile)], capsys)
    assert f"argument {flag}" in err and f"{afile} is a file, not a folder" in err
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("command, flag", [(TRAIN, "--directory"), (TEST, "--report"), (INDEX, "--store"),
                                           ((export_cli.main, ["--network", "unused.pth"]), "--out"),
                                           (TEST, "--results")])
def test_a_link_that_leads_nowhere_is_refused_where_a_folder_belongs(command, flag, tmp_path, capsys):
    """A link loop (or a dangling link) as --store, --out or --directory ended in a traceback
    (RuntimeError: Symlink loop, FileExistsError)."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    given = tmp_path / "a" / "results.json" if flag == "--results" else tmp_path / "a"
    err = bad(command, [flag, str(given)], capsys)
    assert f"argument {flag}" in err and f"{tmp_path / 'a'} is a link that leads nowhere" in err


@pytest.mark.parametrize("command, flag", [(TEST, "--results"), (TEST, "--report"), (TRAIN, "--directory"),
                                           (EXTRACT, "--data-root"), (QUERY, "--json")])
def test_a_path_under_a_file_is_refused_before_anything_runs(command, flag, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    err = bad(command, [flag, str(afile / "sub" / "results.json")], capsys)
    assert f"argument {flag}: {afile}/sub/results.json: {afile} is a file, not a folder" in err
    assert afile.read_text() == "mine"


COMPAT = (compat_cli.main, ["--networks", "unused.pth"])


@pytest.mark.parametrize("command, flag, name", [(TEST, "--results", "results.json"), (QUERY, "--json", "results.json"),
                                                 (COMPAT, "--heatmap", "heatmap.png")])
def test_results_into_a_folder_are_refused_before_anything_runs(command, flag, name, tmp_path, capsys):
    """search query --json FOLDER ended in a traceback after the work: the results were lost;
    the file name suggested is of the flag's kind (compat --heatmap DIR suggested a .json)."""
    err = bad(command, [flag, str(tmp_path)], capsys)
    assert f"argument {flag}: {tmp_path} is a folder; give a file name (e.g. {tmp_path / name})" in err


@pytest.mark.parametrize("command, flag, name", [(TEST, "--results", "model_best.pth.tar"),
                                                 (QUERY, "--json", "query.jpg"), (DEMO, "--json", "runs.tar"),
                                                 (COMPAT, "--json", "net.pth"), (COMPAT, "--heatmap", "notes.txt")])
def test_results_never_replace_a_file_of_another_kind(command, flag, name, tmp_path, capsys):
    """test.py --results model_best.pth.tar replaced the checkpoint with the results."""
    precious = tmp_path / name
    precious.write_bytes(b"PK\x03\x04 a checkpoint, an image or notes")
    err = bad(command, [flag, str(precious)], capsys)
    assert f"argument {flag}: {precious} exists and is not a" in err and "it is not replaced" in err
    assert precious.read_bytes() == b"PK\x03\x04 a checkpoint, an image or notes"


@pytest.mark.parametrize("kind, content", [("JSON", b' \n{"old": 1}'), ("JSON", b""), ("PNG", b"\x89PNG\r\n\x1a\n...")])
def test_results_replace_an_earlier_file_of_their_kind(kind, content, tmp_path):
    from aml.cli.arguments import output_file_of

    earlier = tmp_path / "out"
    earlier.write_bytes(content)
    assert output_file_of(kind)(str(earlier)) == str(earlier)


def test_query_results_inside_the_store_are_refused(tmp_path, capsys):
    """search query --json STORE/search.json would replace the store's own record."""
    store = tmp_path / "photos.store"
    store.mkdir()
    (store / "search.json").write_text('{"source": "vgg16"}')
    err = bad((search_cli.main, ["query", "q.jpg", "--network", "unused.pth"]),
              ["--store", str(store), "--json", str(store / "search.json")], capsys)
    assert f"is in the store {store}, which it would break; write it elsewhere" in err
    assert (store / "search.json").read_text() == '{"source": "vgg16"}'
    # another store's manifest, and a run's history, from any command that writes JSON
    other = tmp_path / "distractors"
    other.mkdir()
    (other / "manifest.json").write_text('{"shard_size": 16384, "count": 3}')
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss_log.txt").write_text("epoch,loss\n")
    (run / "history.json").write_text("[]")
    features = tmp_path / "db.npy"  # a feature file and its settings, which check its provenance
    features.write_bytes(b"\x93NUMPY")
    (tmp_path / "db.npy.json").write_text("{}")
    deploy = tmp_path / "deploy"  # an export's int8 report beside its files (query --json replaced it)
    deploy.mkdir()
    (deploy / "student-int8.onnx").write_bytes(b"onnx")
    (deploy / "int8.json").write_text('{"provenance": {}, "report": {}}')
    for command, flag, target, owner in ((QUERY, "--json", other / "manifest.json", f"in the store {other}"),
                                         (QUERY, "--json", deploy / "int8.json",
                                          f"the int8 report of the export in {deploy}"),
                                         (TEST, "--results", other / "manifest.json", f"in the store {other}"),
                                         (TEST, "--results", run / "history.json", f"in the run folder {run}"),
                                         (TEST, "--results", tmp_path / "db.npy.json",
                                          f"the settings of the feature file {features} (its provenance)")):
        err = bad(command, [flag, str(target)], capsys)
        assert f"argument {flag}: {target} is {owner}, which it would break" in err
    assert (other / "manifest.json").read_text() == '{"shard_size": 16384, "count": 3}'
    assert (run / "history.json").read_text() == "[]"
    assert (tmp_path / "db.npy.json").read_text() == "{}"
    assert (deploy / "int8.json").read_text() == '{"provenance": {}, "report": {}}'
    err = bad(TEST, ["--results", str(other / "results.json"), "-d", "nosuch"], capsys)  # the next index refuses it
    assert f"argument --results: {other / 'results.json'} is in the store {other}" in err
    err = bad(TEST, ["--results", str(run / "results.json"), "-d", "nosuch"], capsys)  # a run's folder takes it
    assert "is in the" not in err and "nosuch" in err


EXPORT = (export_cli.main, ["--network", "unused.pth", "--out", "unused-deploy"])
EXPORT_CASES = [
    (["--int8"], "--int8 needs --calibration DIR: a folder of images like the queries to calibrate on"),
    # recorded in the ONNX metadata as the student's teacher, which no search could then match
    (["--teacher", "vgg61"], "--teacher 'vgg61' is neither a published network"),
    (["--calibration", "photos"], "--calibration is for the int8 student: add --int8"),
    (["--test-set", "synth-oxford"], "--test-set is for the int8 student: add --int8"),
    (["--int8", "--calibration", "no/such/folder"],
     "argument --calibration: no/such/folder does not exist; give the folder that holds images like the queries"),
    (["--int8", "--calibration-images", "0"], "argument --calibration-images: must be a positive integer, got '0'"),
    (["--image-size", "-1"], "argument --image-size/-imsize: must be a positive integer"),
    (["--time-repeats", "0"], "argument --time-repeats: must be a positive integer"),
    # ignored without a word before
    (["--image-size", "99", "--no-onnx"], "--image-size is for the int8 student: add --int8"),
    (["--time-repeats", "3"], "--time-repeats times the files of --test-set's report: add --test-set"),
]


@pytest.mark.parametrize("extra, message", EXPORT_CASES, ids=[" ".join(c[0]) for c in EXPORT_CASES])
def test_bad_export_flags_are_refused_before_anything_loads(extra, message, capsys):
    assert message in bad(EXPORT, extra, capsys)


def test_an_int8_report_is_refused_before_the_export_where_it_cannot_be_made_or_kept(synth_root, tmp_path, capsys):
    """A misspelt --test-set was refused after the export had replaced the earlier files (and
    the calibration had run); a file int8.json of one's own was replaced by the report."""
    out = tmp_path / "deploy"
    out.mkdir()
    photos = str(synth_root / "test" / "synth-oxford" / "jpg")
    command = (export_cli.main, ["--network", "unused.pth", "--out", str(out), "--int8", "--calibration", photos,
                                 "--data-root", str(synth_root)])
    err = bad(command, ["--test-set", "synth-oxfrd"], capsys)
    assert "--test-set: Unsupported or unknown dataset: synth-oxfrd!" in err
    (out / "int8.json").write_text("my measurements, do not lose")
    err = bad(command, ["--test-set", "synth-oxford"], capsys)
    assert f"{out / 'int8.json'} exists and is not an earlier int8 report: it is not replaced" in err
    assert (out / "int8.json").read_text() == "my measurements, do not lose"
    assert sorted(p.name for p in out.iterdir()) == ["int8.json"]
    (out / "int8.json").write_text('{"provenance": {}, "report": {}}')  # an earlier report: replaced, not refused
    with pytest.raises(SystemExit, match="network 'unused.pth' is neither a file nor a name"):  # loaded: past the flags
        export_cli.main(command[1] + ["--test-set", "synth-oxford"])


@pytest.mark.parametrize("marker", ["search.json", "manifest.json", "descriptors.npy"])
def test_an_export_into_a_store_folder_is_refused_before_anything_loads(tmp_path, marker, capsys):
    """student.pt and student.onnx in a store's folder made the next `search index` of it refuse."""
    store = tmp_path / "photos.store"
    store.mkdir()
    (store / marker).write_text({"search.json": '{"source": "vgg16"}', "manifest.json": '{"shard_size": 16}'}.get(
        marker, "{}"))
    for out in (store, store / "deploy"):  # in it at any depth (a folder below it was taken)
        err = bad((export_cli.main, ["--network", "unused.pth"]), ["--out", str(out)], capsys)
        assert (f"argument --out: {out} is in the store {store} (it holds {marker}): the exported files there would "
                "keep it from being indexed again; give another folder") in err
    assert sorted(p.name for p in store.iterdir()) == [marker]
    if marker != "descriptors.npy":  # a JSON of another program's, by that name: no store's
        (store / marker).write_text('{"benchmark": "search"}')
        with pytest.raises((SystemExit, AmlError), match="unused.pth"):  # past the folder's check
            export_cli.main(["--network", "unused.pth", "--out", str(store)])


def test_a_calibration_folder_without_images_is_named(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    err = bad(EXPORT, ["--int8", "--calibration", str(tmp_path)], capsys)
    assert f"--calibration {tmp_path} holds no images (.jpg, .png, ...)" in err


def _tiny_onnx(path, props=None):
    """An ONNX graph image -> 8-d descriptor (a channel mean, tiled), with metadata ``props``."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [2], [1, 3])
    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
             helper.make_node("Tile", ["mean", "repeats"], ["tiled"]),
             helper.make_node("Slice", ["tiled", "zero", "eight", "one"], ["descriptor"])]
    consts = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
              for name, value in (("zero", 0), ("eight", 8), ("one", 1))]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["batch", 8])],
                              [axes, repeats] + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_query_onnx_of_another_network_or_damaged_is_one_line(tmp_path, capsys):
    from PIL import Image

    from aml.cli import search as search_cli
    from aml.descriptors import write_feature_file
    from aml.descriptors.onnx_student import OnnxStudentInfo

    store = tmp_path / "store"
    store.mkdir()
    vecs = np.eye(8, 4, dtype=np.float32)
    write_feature_file(vecs, [f"{i}.jpg" for i in range(4)], store / "descriptors.npy",
                       {"network": "vgg-teacher", "source": "vgg-teacher.pth", "fingerprint": "f" * 16,
                        "image_size": 32, "scales": [1.0], "dim": 8})
    query = tmp_path / "q.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(query)
    other = OnnxStudentInfo("student", "0" * 16, "resnet-teacher", "e" * 16, 8, None).props()
    mine = OnnxStudentInfo("student", "0" * 16, "vgg-teacher", "f" * 16, 8, None).props()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf" * 50)
    expected = {
        _tiny_onnx(tmp_path / "other.onnx", other): "other.onnx is a student of resnet-teacher (weights eeeeeeee), "
                                                   f"but the store {store} was encoded by vgg-teacher (vgg-teacher.pth, "
                                                   "weights ffffffff)",
        _tiny_onnx(tmp_path / "bare.onnx"): "bare.onnx has no aml metadata",
        garbage: "garbage.onnx is not a readable ONNX model",
        tmp_path / "missing.onnx": "missing.onnx does not exist; export the student with: python -m aml.export",
    }
    for path, message in expected.items():
        with pytest.raises(SystemExit) as info:
            search_cli.main(["query", str(query), "--store", str(store), "--onnx", str(path), "-q"])
        assert str(info.value.code).startswith("error: ") and message in str(info.value.code)
        assert len(str(info.value.code).splitlines()) == 1
    hits = search_cli.main(["query", str(query), "--store", str(store), "--onnx",
                            str(_tiny_onnx(tmp_path / "mine.onnx", mine)), "-k", "2", "-q"])
    assert [hit["image"] for hit in hits[0]["results"]] == ["1.jpg", "2.jpg"]  # green (200), then blue (30)
    capsys.readouterr()
    err = bad((search_cli.main, ["query", str(query), "--store", str(store)]), ["--onnx", "a.onnx", "-npath", "b"],
              capsys)
    assert "argument --network/-npath: not allowed with argument --onnx" in err


@pytest.fixture(scope="module")
def small_network(tmp_path_factory):
    import torch

    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 0, 0.0),
                           tmp_path_factory.mktemp("net") / "net.pth.tar")


def test_reranking_larger_than_the_database_is_refused_before_anything_is_encoded(small_network, synth_root, capsys,
                                                                                  monkeypatch, tmp_path):
    from aml.data.synthetic import SyntheticDistractorConfig, generate_distractor_set
    from aml.data.testsets import configdataset
    from aml.evaluation import ranking, testing

    generate_distractor_set(synth_root, "synth-1m", SyntheticDistractorConfig(images=150, image_size=64))
    size = configdataset("synth-oxford", synth_root / "test")["n"]
    monkeypatch.setattr(testing, "describe_images", None)  # nothing may be encoded
    run = (test_cli.main, ["-npath", str(small_network), "--data-root", str(synth_root), "-j", "0", "-q"])
    err = bad(run, ["-d", "synth-oxford", "--dba", str(size)], capsys)
    assert (f"--dba {size}: the database of synth-oxford holds {size} images, so an image has at most {size - 1} "
            f"neighbours; give --dba {size - 1} or less") in err
    err = bad(run, ["-d", "synth-oxford+synth1m", "--qe", str(size + 151)], capsys)
    assert (f"--qe {size + 151}: the database of synth-oxford+synth1m holds {size} images and 150 distractors; give "
            f"--qe {size + 150} or less") in err
    err = bad(run, ["-d", "synth-oxford", "--superglobal", str(size + 1)], capsys)
    assert (f"--superglobal {size + 1}: the database of synth-oxford holds {size} images; give --superglobal {size} "
            "or less") in err
    # SuperGlobal keeps each query's first M descriptors, with or without distractors (bound lowered to 4 of 30 queries)
    monkeypatch.setattr(ranking, "NEIGHBOUR_VALUES", 30 * 512 * 4)
    err = bad(run, ["-d", "synth-oxford", "--superglobal", "5"], capsys)
    assert ("--superglobal 5 with synth-oxford: its 30 queries would keep their 5 nearest 512-d descriptors "
            "(0.000286 GiB) while the database is searched, more than a search is given; give --superglobal 4 or "
            "less") in err
    # so do αQE without distractors and a report's top K: both were refused only after every image was encoded
    err = bad(run, ["-d", "synth-oxford", "--qe", "5"], capsys)
    assert "--qe 5 with synth-oxford: its 30 queries would keep their 5 nearest 512-d descriptors" in err
    with pytest.raises(ConfigError, match="--report-top 5 with synth-oxford: its 30 queries would keep their 5 nearest "
                                          "512-d descriptors .* give --report-top 4 or less"):
        run[0](run[1] + ["-d", "synth-oxford", "--report", str(tmp_path / "report"), "--report-top", "5"])


def test_search_reranking_larger_than_the_store_is_refused(small_network, synth_root, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for image in sorted((synth_root / "test" / "synth-oxford" / "jpg").glob("*.jpg"))[:3]:
        shutil.copy(image, folder)
    common = ["-j", "0", "--device", "cpu", "-q"]
    index = ["index", str(folder), "--store", str(tmp_path / "store"), "--teacher", str(small_network), "-imsize", "32"]
    with pytest.raises(SystemExit, match=r"error: --dba 3: 3 images to index, so an image has at most 2 neighbours; "
                                         r"give --dba 2 or less"):
        search_cli.main(index + ["--dba", "3"] + common)
    assert not (tmp_path / "store" / "search.json").exists()
    search_cli.main(index + ["--dba", "2"] + common)
    query = ["query", str(next(folder.iterdir())), "--store", str(tmp_path / "store"), "--network",
             str(small_network), "--teacher", str(small_network)]
    with pytest.raises(SystemExit, match=r"error: --qe 4: the store .*store holds 3 images; give --qe 3 or less"):
        search_cli.main(query + ["--qe", "4"] + common)
    with pytest.raises(SystemExit, match=r"error: --superglobal 5: the store .*store holds 3 images; give "
                                         r"--superglobal 3 or less"):
        search_cli.main(query + ["--superglobal", "5"] + common)


def test_an_onnx_folder_is_named_a_folder(tmp_path, capsys):
    from aml.descriptors.onnx_student import OnnxStudentError, onnx_session

    with pytest.raises(OnnxStudentError, match=f"{tmp_path} is a folder, not an ONNX file; give student.onnx"):
        onnx_session(tmp_path)
    from aml.descriptors.onnx_student import read_onnx_metadata

    (tmp_path / "empty.onnx").write_bytes(b"")  # read as a model without metadata: "an older version's"
    with pytest.raises(OnnxStudentError, match=r"empty.onnx is empty \(0 bytes\): the copy or the export stopped"):
        read_onnx_metadata(tmp_path / "empty.onnx")


STORE = "a store (python -m aml.search index writes one)"


@pytest.mark.parametrize("command, flag, holding", [
    ((make_testset_cli.main, ["d.csv", "--name", "x"]), "--images", "the images"),
    ((make_trainset_cli.main, ["--name", "x"]), "--folders", "the landmark folders"),
    ((make_trainset_cli.main, ["--name", "x", "--csv", "d.csv"]), "--images", "the images"),
    (QUERY, "--store", STORE),
    ((export_cli.main, ["--network", "unused.pth", "--out", "unused-deploy"]), "--store", STORE),
    ((export_cli.main, ["--network", "unused.pth", "--out", "unused-deploy", "--int8"]), "--calibration",
     "images like the queries"),
])
def test_a_mistyped_input_folder_is_named_as_such(command, flag, holding, tmp_path, capsys):
    """A missing --images was reported as each image under it missing ('download the data set
    again'), a missing --store as one without a descriptors.npy; a file given as an input
    folder was refused as if the folder were to be created."""
    missing = tmp_path / "imgs"
    assert f"argument {flag}: {missing} does not exist; give the folder that holds {holding}" in bad(
        command, [flag, str(missing)], capsys)
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    err = bad(command, [flag, str(afile)], capsys)
    assert f"argument {flag}: {afile} is a file, not a folder" in err and "created" not in err


@pytest.mark.parametrize("command, flag", [(TRAIN, "--directory"), (TEST, "--report"), (INDEX, "--store"),
                                           ((export_cli.main, ["--network", "unused.pth"]), "--out")])
def test_an_output_folder_this_user_cannot_write_is_refused_before_any_work(command, flag, tmp_path, capsys,
                                                                            monkeypatch):
    """On a read-only mount these ended in a traceback, test.py --report and extract_features.py
    after every image was encoded."""
    import os

    from aml.cli import arguments

    mounted = tmp_path / "ro"
    mounted.mkdir()
    real_access = os.access
    monkeypatch.setattr(arguments.os, "access", lambda path, mode: real_access(path, mode) and mounted != Path(path))
    err = bad(command, [flag, str(mounted / "out")], capsys)
    assert f"argument {flag}: {mounted / 'out'}: this user cannot write in {mounted} (read-only, or another " in err


def test_extract_features_on_a_read_only_data_root_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import os

    from aml.cli import arguments

    root = tmp_path / "shared"
    root.mkdir()
    real_access = os.access
    monkeypatch.setattr(arguments.os, "access", lambda path, mode: real_access(path, mode) and root != Path(path))
    err = bad(EXTRACT, ["--data-root", str(root), "-d", "synth-oxford"], capsys)
    assert f"{root / 'features'}: this user cannot write in {root}" in err


@pytest.mark.parametrize("code, reason", [(30, "Read-only file system"), (13, "Permission denied")])
def test_an_access_refused_while_running_ends_in_one_line_naming_the_path(code, reason):
    from aml.cli.arguments import one_line_errors

    with pytest.raises(SystemExit) as info, one_line_errors():
        raise (PermissionError if code == 13 else OSError)(code, reason, "/mnt/shared/runs/model_epoch1.pth.tar")
    assert str(info.value.code) == (f"error: /mnt/shared/runs/model_epoch1.pth.tar: {reason} (read-only, or another "
                                    "user's); give paths this user can read and write; files already written are "
                                    "complete")


def test_a_name_too_long_ends_in_one_line_naming_it(tmp_path):
    """A checkpoint path of 300 characters ended test.py in pathlib's OSError traceback (errno
    36), and a query image of such a name was 'corrupt or not an image; re-download it'."""
    from aml.cli.arguments import one_line_errors
    from aml.data.images import ImageLoadError, load_and_resize

    long = tmp_path / ("x" * 300 + ".pth")
    main, base = TEST
    with pytest.raises(SystemExit) as info, one_line_errors():
        main(base + ["-npath", str(long), "--data-root", str(tmp_path), "--device", "cpu"])
    assert str(info.value.code) == f"error: {long}: File name too long; give a shorter name, or a path of fewer folders"
    with pytest.raises(ImageLoadError, match=r"^image .*xxx.jpg: File name too long; give a shorter name"):
        load_and_resize(long.with_suffix(".jpg"), 64)


def test_a_data_root_that_is_a_file_is_named_with_where_it_came_from(tmp_path, monkeypatch):
    from aml.data.paths import DataRoot

    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    monkeypatch.setenv("AML_DATA_ROOT", str(afile))
    with pytest.raises(ConfigError, match=rf"the data root {afile} \(from \$AML_DATA_ROOT\) is a file, not a folder"):
        DataRoot.resolve()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import")  # imported by the other tests
@pytest.mark.parametrize("module", sorted(path.stem for path in (Path(__file__).parents[2] / "aml" / "cli").glob("*.py")
                                          if path.stem not in ("__init__", "arguments")))
def test_every_command_module_runs_as_a_program(module, capsys, monkeypatch):
    """python -m aml.cli.compat (test, train, extract_features) printed nothing and exited 0."""
    import runpy
    import signal
    import sys

    monkeypatch.setattr(sys, "argv", [module, "--help"])
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # run_cli's SIGTERM handler stays the test's
    with pytest.raises(SystemExit) as info:
        runpy.run_module(f"aml.cli.{module}", run_name="__main__", alter_sys=False)
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_export_never_replaces_what_is_not_an_earlier_export(earlier_export, tmp_path, capsys):
    """A folder named student.pt ended the export in a traceback after the work; a user's file
    named student.pt or student.onnx was replaced without a word, and so was a checkpoint saved
    as student.pt (a zip, as TorchScript is) or an ONNX model of one's own (protobuf, as aml's)."""
    out = tmp_path / "deploy"
    (out / "student.pt").mkdir(parents=True)
    err = bad((export_cli.main, ["--network", "unused.pth"]), ["--out", str(out)], capsys)
    assert f"argument --out: {out / 'student.pt'} is a folder, not an exported student: it is not replaced; export elsewhere" in err
    (out / "student.pt").rmdir()
    (out / "student.onnx").write_text("my notes")
    err = bad((export_cli.main, ["--network", "unused.pth"]), ["--out", str(out)], capsys)
    assert f"{out / 'student.onnx'} exists and is not an ONNX student that aml exported: it is not replaced" in err
    assert (out / "student.onnx").read_text() == "my notes"
    from aml.cli.export import export_folder

    import onnx

    (out / "student.onnx").write_bytes(b"")  # empty: replaced
    torch.save({"epoch": 41, "state_dict": {}}, out / "student.pt")
    err = bad((export_cli.main, ["--network", "unused.pth"]), ["--out", str(out)], capsys)
    assert f"{out / 'student.pt'} exists and is not a TorchScript student that aml exported" in err
    with warnings.catch_warnings():  # TorchScript is deprecated upstream
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Identity()), out / "student.pt")  # TorchScript, not aml's student
    capsys.readouterr()
    assert "is not a TorchScript student that aml exported" in bad((export_cli.main, ["--network", "unused.pth"]),
                                                                    ["--out", str(out)], capsys)
    (out / "student.pt").write_bytes((earlier_export / "student.pt").read_bytes())
    own = onnx.load(str(earlier_export / "student.onnx"))
    del own.metadata_props[:]
    onnx.save(own, str(out / "student-int8.onnx"))
    assert "student-int8.onnx exists and is not an ONNX student that aml exported" in bad(
        (export_cli.main, ["--network", "unused.pth"]), ["--out", str(out)], capsys)
    for name in ("student.onnx", "student-int8.onnx"):  # earlier exports: replaced
        (out / name).write_bytes((earlier_export / name).read_bytes())
    assert export_folder(str(out)) == str(out)
    import sys

    sys.modules["onnx"], real = None, sys.modules["onnx"]  # without the onnx package (--no-onnx): as ONNX begins
    try:
        assert export_folder(str(out)) == str(out)
    finally:
        sys.modules["onnx"] = real


def test_results_and_reports_anywhere_below_a_store_are_refused(tmp_path, capsys):
    """Only a file right in a store's folder was refused: store/sub/hits.json, test.py --report
    STORE and main.py --directory STORE/runs were written, and the store's next indexing then
    refused the folder for them."""
    store = tmp_path / "photos.store"
    store.mkdir()
    (store / "search.json").write_text('{"source": "vgg16"}')
    for command, flag, target in ((QUERY, "--json", store / "sub" / "hits.json"),
                                  (TEST, "--results", store / "sub" / "r.json"),
                                  (TEST, "--report", store),
                                  (TRAIN, "--directory", store / "runs")):
        err = bad(command, [flag, str(target)], capsys)
        assert f"argument {flag}: {target}" in err and f"in the store {store}, which it would break" in err
    assert sorted(p.name for p in store.iterdir()) == ["search.json"]
    err = bad(TEST, ["--report", str(tmp_path / "reports"), "-d", "nosuch"], capsys)  # beside it: fine
    assert "in the store" not in err and "nosuch" in err
    err = bad(TEST, ["--report", str(store / ".." / "reports"), "-d", "nosuch"], capsys)  # beside it, written so
    assert "in the store" not in err and "nosuch" in err


def test_a_command_stopped_with_ctrl_c_says_so_for_any_command_and_exits_130(capsys):
    """Every command said "checkpoints already written are complete" (test.py writes none), and
    exited 1 on Ctrl-C, as after a failure: a script could not tell the two apart."""
    import signal

    from aml.cli.arguments import run_cli

    def interrupted():
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            run_cli(interrupted)
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert stopped.value.code == 130 and "checkpoints" not in err
    assert "interrupted: the files already written are complete (each is written atomically)" in err
