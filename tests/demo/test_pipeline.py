"""The demo pipeline end to end with tiny settings (the real one is `make demo`)."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from aml.demo import DemoBudget, format_table, main, run_demo, train_teacher
from aml.networks.checkpoint import load_checkpoint
from aml.networks.imagenet import IMAGENET_WEIGHTS, package_file

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

TINY = DemoBudget(image_size=64, teacher_epochs=1, student_epochs=1, query_size=16, pool_size=32, quiet=True)


def test_demo_runs_end_to_end_from_imagenet_and_reuses_its_teacher(synth_root, capsys, caplog):
    # (that the same command trains the same weights is tests/training/test_determinism.py's)
    rows = run_demo(str(synth_root), budget=TINY, student_modes=("reg",), seeds=(0,), report=print)
    assert [(r["network"], r["test"]) for r in rows] == [
        ("teacher efficientnet_lite2 (std)", "symmetric"), ("student mobilenet_v2 untrained", "asymmetric"),
        ("student mobilenet_v2 ImageNet only", "asymmetric"), ("student mobilenet_v2 (reg)", "symmetric"),
        ("student mobilenet_v2 (reg)", "asymmetric")]
    runs = synth_root / "demo" / "runs"
    v1 = torch.load(package_file(IMAGENET_WEIGHTS["mobilenet_v2"].files[0].package), weights_only=True)
    imagenet = load_checkpoint(next(runs.glob("imagenet-mobilenet_v2-*-seed0.pth.tar")))["state_dict"]
    assert torch.equal(imagenet["features.0.0.0.weight"], v1["features.0.0.weight"])  # the original's V1 file
    assert not list((synth_root / "networks").glob("aml-synthetic-pretrained-*"))  # no stand-in needed
    teacher = next(runs.glob("synth-sfm_efficientnet_lite2_*/model_epoch1.pth.tar"))
    from aml.data.download import file_sha256

    # the student's folder names its epochs and its teacher's weights: runs of other settings are not deleted
    assert next(runs.glob(f"synth-sfm_mobilenet_v2_*_reg_*_e1_{file_sha256(teacher)[:8]}/model_epoch1.pth.tar"))
    first = capsys.readouterr().out
    from aml.data.testsets import read_test_set

    cfg = read_test_set("synth-oxford", synth_root / "test")
    assert ">> data: synth-sfm " in first and f"synth-oxford {cfg['nq']} queries, {cfg['n']} database images" in first
    assert "synth-oxford M" in first and "student mobilenet_v2 (reg)" in first
    assert format_table(rows).count("\n") == len(rows) + 1
    assert format_table(rows) in first
    stamp = teacher.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="aml"):
        assert train_teacher(synth_root, "efficientnet_lite2", TINY, 0) == teacher
    assert teacher.stat().st_mtime_ns == stamp  # the teacher of the first run is reused, not trained again
    # said as reused: resumed, it was "nothing to train ...; raise --epochs", a flag the demo does not have
    assert "--epochs" not in caplog.text and "trained by an earlier demo on these images, reused" in caplog.text
    record = json.loads((synth_root / "demo" / "results.json").read_text())
    assert [(r["network"], r["test"]) for r in record["rows"]] == [(r["network"], r["test"]) for r in rows]
    assert record["rows"][0]["map"]["synth-oxford"]["medium"] == [
        round(100 * rows[0]["results"][0]["synth-oxford"]["plain"]["medium"]["map"], 4)]
    assert record["seconds"]["total"] >= record["seconds"]["students"] > 0 and record["provenance"]["torch"]
    markdown = (synth_root / "demo" / "results.md").read_text()
    assert "| student mobilenet_v2 (reg) | asymmetric | " in markdown and markdown.count("\n| ") == len(rows) + 1
    from PIL import Image

    with Image.open(synth_root / "demo" / "results.png") as chart:
        assert chart.format == "PNG" and chart.size[0] >= 600


def test_a_teacher_is_reused_only_for_its_epochs_and_its_images(synth_root, tmp_path):
    """A teacher trained for more epochs shared the folder of the default one: the next default
    demo resumed model_epoch1 beside model_epoch2 and was refused with flags the demo lacks; and a
    teacher trained on synth-sfm before it was generated again was reused for the new images."""
    import os

    from pathlib import Path

    from aml.data.trainsets import load_training_db
    from aml.demo.pipeline import _training_images_digest

    teacher = train_teacher(synth_root, "efficientnet_lite2", TINY, 0)
    stamp = teacher.stat().st_mtime_ns
    longer = train_teacher(synth_root, "efficientnet_lite2", dataclasses.replace(TINY, teacher_epochs=2), 0)
    assert longer.name == "model_epoch2.pth.tar" and longer.parent != teacher.parent
    assert train_teacher(synth_root, "efficientnet_lite2", TINY, 0) == teacher  # not refused,
    assert teacher.stat().st_mtime_ns == stamp  # not retrained
    image = Path(load_training_db("synth-sfm", "train", synth_root)["images"][0])
    before, stamp = _training_images_digest(synth_root), image.stat()
    os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # the images made again
    try:
        assert _training_images_digest(synth_root) != before
    finally:
        os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert _training_images_digest(synth_root) == before
    moved = tmp_path / "moved"  # the data root moved (mv keeps the files' times): the same images
    moved.mkdir()
    shutil.copytree(synth_root / "train", moved / "train", copy_function=shutil.copy2)
    assert _training_images_digest(moved) == before


def test_the_losses_of_later_papers_train_in_the_demos_setting(synth_root):
    """Each recipe of a later paper's loss trains the ImageNet student in mode reg against the
    demo's teacher (reused): finite losses, moved weights, its loss in the run's name."""
    from aml.demo.pipeline import DEFAULT_STUDENTS, STUDENT_OPTIONS, _train

    teacher = train_teacher(synth_root, "efficientnet_lite2", TINY, 0)
    v1 = torch.load(package_file(IMAGENET_WEIGHTS["mobilenet_v2"].files[0].package), weights_only=True)
    assert set(STUDENT_OPTIONS) - set(DEFAULT_STUDENTS) == {"csd", "bct", "hvs", "lce"}
    for name in ("csd", "bct", "hvs", "lce"):
        assert STUDENT_OPTIONS[name]["mode"] == "reg" and STUDENT_OPTIONS[name]["loss"] == name
        path = _train(synth_root / "demo" / "runs", synth_root, "mobilenet_v2", TINY.student_epochs,
                      dict(TINY.options(), **STUDENT_OPTIONS[name]), 0, teacher)
        assert f"_{name}_m" in path.parent.name and "_reg_" in path.parent.name
        state = load_checkpoint(path)
        assert math.isfinite(state["min_loss"]) and state["min_loss"] >= 0, name  # the epoch's mean loss
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
        assert not torch.equal(state["state_dict"]["features.0.0.0.weight"], v1["features.0.0.weight"]), name


def test_demo_refuses_unknown_student_modes_and_seed_counts(capsys):
    with pytest.raises(SystemExit):
        main(["--student-modes", "reg,contr"])
    err = capsys.readouterr().err
    assert "unknown ['contr']" in err and "'csd'" in err and "'lce'" in err
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
    assert "argument --seeds: must be a positive integer" in capsys.readouterr().err


def test_json_writes_a_copy_of_the_results_where_the_docs_read_them(tmp_path, monkeypatch):
    from aml.demo import pipeline

    def fake_run_demo(data_root, *args, **kwargs):  # the demo itself is the end-to-end test above
        (tmp_path / "root" / "demo").mkdir(parents=True)
        (tmp_path / "root" / "demo" / "results.json").write_text('{"rows": []}')
        return []

    monkeypatch.setattr(pipeline, "run_demo", fake_run_demo)
    main(["--data-root", str(tmp_path / "root"), "--json", str(tmp_path / "copy.json")])
    assert json.loads((tmp_path / "copy.json").read_text()) == {"rows": []}


def test_a_timm_teacher_trains_from_its_weights_found_offline(synth_root, tmp_path, monkeypatch):
    """--teacher-arch timm:...: the teacher starts from the file that timm's config names (here
    random weights saved under that name in a $AML_WEIGHTS_PATH folder), trains and tests."""
    pytest.importorskip("timm")
    import timm
    from safetensors.torch import save_file

    from aml.demo.pipeline import _test
    from aml.networks.imagenet import MIRROR_ENV

    torch.manual_seed(0)
    released = timm.create_model("test_vit", pretrained=False).state_dict()  # timm's smallest ViT
    save_file(released, str(tmp_path / "test_vit.r160_in1k.safetensors"))
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    teacher = train_teacher(synth_root, "timm:test_vit", TINY, 0)
    assert "_timm:test_vit_gem_" in teacher.parent.name
    state = load_checkpoint(teacher)
    assert state["meta"]["mean"] == [0.5, 0.5, 0.5] and state["meta"]["outputdim"] == 64
    assert state["state_dict"]["features.0.body.pos_embed"].shape == released["pos_embed"].shape
    assert 0 < _test(teacher, synth_root, TINY)["synth-oxford"]["plain"]["medium"]["map"] < 1


def test_a_starting_network_without_its_weights_ends_the_demo_before_any_work(tmp_path, monkeypatch):
    """A --student-arch whose ImageNet file was not here ended the demo after the data were made
    and the teacher trained."""
    from aml.demo import pipeline
    from aml.networks.imagenet import WeightsError

    asked = []

    def missing(arch, data_root=None, download=True):
        asked.append(arch)
        raise WeightsError(f"no ImageNet weights of {arch}")

    monkeypatch.setattr(pipeline, "find_weights", missing)
    monkeypatch.setattr(pipeline, "run_demo", lambda *args, **kwargs: pytest.fail("the demo started"))
    with pytest.raises(WeightsError, match="no ImageNet weights of resnet50"):
        main(["--data-root", str(tmp_path / "root"), "--student-arch", "resnet50"])
    assert asked == ["resnet50"] and not (tmp_path / "root").exists()


def test_the_initial_student_leaves_the_callers_generator_alone(tmp_path):
    """It seeded torch's global generator for good: a caller's torch.manual_seed then had no effect."""
    from aml.demo.pipeline import _initial_student

    draws, weights = [], []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        path = _initial_student(tmp_path, "resnet18", 64, 0, False, tmp_path)
        draws.append(torch.rand(1))
        weights.append(load_checkpoint(path)["state_dict"])
    assert not torch.equal(*draws)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_run_folder_another_demo_trains_in_is_not_deleted_under_it(tmp_path):
    """The demo deleted its run folder before training it again, whatever held it: a second demo
    on the same data root deleted the first one's files mid-run and both trained in one folder."""
    from aml.demo.pipeline import _remove_run
    from aml.utils.atomic import FolderInUse, folder_lock

    folder = tmp_path / "runs" / "a_run"
    folder.mkdir(parents=True)
    (folder / "model_epoch1.pth.tar").write_bytes(b"weights")
    with folder_lock(folder):  # the other demo, training
        with pytest.raises(FolderInUse, match="wait for the other demo to end"):
            _remove_run(folder)
    assert (folder / "model_epoch1.pth.tar").read_bytes() == b"weights"
    _remove_run(folder)  # no run in it: the demo's own, trained again
    assert not folder.exists()
