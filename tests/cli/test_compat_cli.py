"""python -m aml.compat end to end: the networks by file, the tables printed, the JSON with its
settings and provenance, the heatmaps; and the flags refused before anything is loaded."""

import json

import pytest
import torch

from aml.cli import compat as compat_cli
from aml.compat import CompatibilityMatrix
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint

# Uses the learning tests' trained teacher (trained once per session): started early (conftest).
pytestmark = pytest.mark.long


@pytest.fixture
def root(tmp_path, synth_root):
    """A data root of its own with the session's synthetic test and training sets."""
    (tmp_path / "data").mkdir()
    for part in ("test", "train"):
        (tmp_path / "data" / part).symlink_to(synth_root / part)
    return tmp_path / "data"


def test_the_matrix_is_printed_written_and_drawn_with_whitening(trained_teacher, root, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    student = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 0, 0.0),
                              tmp_path / "student.pth.tar")
    out, png = tmp_path / "out" / "compat.json", tmp_path / "compat.png"
    matrix = compat_cli.main(["-n", f"{trained_teacher},{student}", "--labels", "teacher,student",
                              "-d", "synth-oxford", "-imsize", "64", "-w", "synth-sfm", "-j", "0", "--device", "cpu",
                              "--data-root", str(root), "-q", "--json", str(out), "--heatmap", str(png)])
    printed = capsys.readouterr().out
    assert ">> synth-oxford + whiten, mAP Hard (%)" in printed and "*: beats the teacher's symmetric mAP" in printed
    record = json.loads(out.read_text())
    assert CompatibilityMatrix.from_record(record) == matrix
    assert list(record["maps"]["synth-oxford"]) == ["plain", "whiten"]
    assert record["settings"]["labels"] == ["teacher", "student"] and record["settings"]["whitening"] == "synth-sfm"
    assert record["networks"][0]["given"] == str(trained_teacher) and record["networks"][0]["mode"] == "std"
    assert "torch" in record["provenance"] and record["seconds"] > 0
    assert record["provenance"]["command"].startswith(f"python -m aml.compat -n {trained_teacher},")  # not pytest's
    whitened = matrix.maps["synth-oxford", "whiten", "medium"]
    assert whitened[0, 0] > whitened[1, 1]  # the trained teacher, whitened, above a random network
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("flags, message", [
    (["-n", "a/model.pth.tar,b/model.pth.tar"], "two networks are called 'model' (a/model.pth.tar and "
                                                "b/model.pth.tar); name them with --labels"),
    (["-n", "a.pth.tar", "b.pth.tar", "--labels", "teacher"], "--labels 'teacher': 1 labels for 2 networks"),
    (["-n", "a.pth.tar", "b.pth.tar", "--labels", ",b"], "--labels ',b': label 1 is empty; give each network one"),
    (["-n", "a.pth.tar", "-d", "nosuchset"], "Unsupported or unknown dataset: nosuchset"),
    (["-n", "a.pth.tar", "-d", ","], "names no test set"),
    (["-n", "a.pth.tar", "-d", "synth-oxford,synth-oxford"], "names synth-oxford twice; give each test set once"),
    (["-n", ","], "--networks ',' names no network; give one or more"),
    (["-n", "a.pth.tar", "--json", "out.x", "--heatmap", "out.x"], "--json and --heatmap are both out.x: the heatmap "
                                                                     "would replace the JSON"),
    (["-n", "a.pth.tar", "--json", "out/d.x", "--heatmap", "out/../out/d.x"], "--json and --heatmap are both out/d.x"),
    (["-n", "nets/t.pth.tar", "./nets/t.pth.tar"], "nets/t.pth.tar and ./nets/t.pth.tar name one network; give it "
                                                   "once"),
])
def test_bad_flags_are_one_line_before_anything_is_loaded(flags, message, root, capsys, monkeypatch, tmp_path):
    """'-n ,' prepared (downloaded) the test sets before it was refused; '--json X --heatmap X'
    replaced the JSON with the heatmap."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        compat_cli.main(flags + ["--data-root", str(root)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_under_torchrun_or_into_a_folder_it_cannot_write_it_stops_before_any_work(root, capsys, monkeypatch, tmp_path):
    """Under torchrun every process computed the whole matrix; an output in a read-only folder
    ended the command in a traceback after all the pairs were tested."""
    import os

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        compat_cli.main(["-n", "a.pth.tar", "--data-root", str(root)])
    assert "runs as one process; start it without torchrun" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path / "ro") and real_access(path, mode))
    (tmp_path / "ro").mkdir()
    with pytest.raises(SystemExit):
        compat_cli.main(["-n", "a.pth.tar", "--data-root", str(root), "--json", str(tmp_path / "ro" / "m.json")])
    assert f"this user cannot write in {tmp_path / 'ro'}" in capsys.readouterr().err


def test_one_network_given_twice_is_refused_before_the_test_sets_are_prepared(root, tmp_path, capsys, monkeypatch):
    """A link, a published network under two names, or a copy under another file name (as
    model_best beside the epoch it copies) gave a matrix whose rows and columns repeat."""
    import shutil

    from aml.utils.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0), tmp_path / "a.pth.tar")
    (tmp_path / "link.pth.tar").symlink_to(tmp_path / "a.pth.tar")
    (tmp_path / "view.json").symlink_to(tmp_path / "out.json")  # the JSON to come, under another name
    for flags, message in ((["-n", "a.pth.tar", "link.pth.tar"], "a.pth.tar and link.pth.tar name one network"),
                           (["-n", "vgg16", "retrievalSfM120k-vgg16-gem"], "vgg16 and retrievalSfM120k-vgg16-gem "
                                                                         "name one network; give it once"),
                           (["-n", "a.pth.tar", "--json", "out.json", "--heatmap", "view.json"],
                            "--json and --heatmap are both out.json")):
        with pytest.raises(SystemExit):
            compat_cli.main(flags + ["--data-root", str(root)])
        assert message in capsys.readouterr().err
    shutil.copyfile(tmp_path / "a.pth.tar", tmp_path / "copy.pth.tar")
    monkeypatch.setattr(compat_cli, "prepare_test_set", lambda *args, **kwargs: pytest.fail("prepared first"))
    with pytest.raises(ConfigError, match=r"networks 'a' and 'copy' are one network \(the same weights"):
        compat_cli.main(["-n", "a.pth.tar", "copy.pth.tar", "--data-root", str(root), "--device", "cpu"])


def test_a_checkpoint_whose_path_holds_a_comma_is_one_network(tmp_path):
    """--comment can put a comma in a run folder's name: its checkpoint was split into two
    missing files, with no way to escape the comma."""
    run = tmp_path / "runs" / "x_lr1e-6,m0.7"
    run.mkdir(parents=True)
    (run / "model_best.pth.tar").write_bytes(b"x")
    specs = compat_cli.network_specs([str(run / "model_best.pth.tar"), "vgg16,resnet101"])
    assert [spec.path for spec in specs] == [run / "model_best.pth.tar", None, None]
    assert [spec.label for spec in specs] == ["model_best", "vgg16", "resnet101"]
