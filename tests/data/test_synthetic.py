"""The synthetic sets load through the real code paths and have consistent protocols."""

from pathlib import Path

import numpy as np
import pytest

from aml.data.images import load_image
from aml.data.synthetic import SyntheticTestConfig, generate_test_set
from aml.data.testsets import configdataset, prepare_test_set, query_and_database_paths
from aml.data.paths import cid2filename
from aml.data.trainsets import load_training_db, load_whitening_db


def test_test_set_loads_like_roxford(synth_root):
    cfg = configdataset("synth-oxford", synth_root / "test")
    images, queries, bbxs = query_and_database_paths(cfg)
    assert cfg["n"] == len(images) and cfg["nq"] == len(queries) == 30
    assert all(load_image(p).size[0] > 0 for p in images[:3] + queries[:3])
    for g, bbx in zip(cfg["gnd"], bbxs):
        easy, hard, junk = set(g["easy"]), set(g["hard"]), set(g["junk"])
        assert easy and hard and not (easy & hard) and not (easy & junk) and not (hard & junk)
        assert max(easy | hard | junk) < cfg["n"]
        assert bbx[0] < bbx[2] and bbx[1] < bbx[3]
    assert not set(cfg["qimlist"]) & set(cfg["imlist"])  # queries are not in the database


def test_test_sets_differ_between_oxford_and_paris(synth_root):
    oxford = configdataset("synth-oxford", synth_root / "test")
    paris = configdataset("synth-paris", synth_root / "test")
    a = np.asarray(load_image(query_and_database_paths(oxford)[1][0]))
    b = np.asarray(load_image(query_and_database_paths(paris)[1][0]))
    assert a.shape != b.shape or np.abs(a.astype(int) - b).mean() > 5


def test_generation_is_deterministic(tmp_path):
    config = SyntheticTestConfig(landmarks=2, queries_per_landmark=1, easy=1, hard=1, junk=1, distractor_landmarks=1,
                        distractor_views=1, image_size=48)
    first = generate_test_set(tmp_path / "a", "synth-oxford", config)
    second = generate_test_set(tmp_path / "b", "synth-oxford", config)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_training_db_has_sfm_layout(synth_root):
    train = load_training_db("synth-sfm", "train", synth_root)
    val = load_training_db("synth-sfm", "val", synth_root)
    assert len(train["cids"]) == len(train["cluster"]) == 16 * 8 and len(val["cids"]) == 4 * 8
    assert train["images"][0] == cid2filename(train["cids"][0], synth_root / "train" / "synth-sfm" / "ims")
    assert load_image(train["images"][0]).size
    for q, p in zip(train["qidxs"], train["pidxs"]):
        assert q != p and train["cluster"][q] == train["cluster"][p]
    assert not set(train["cluster"]) & set(val["cluster"])
    whiten = load_whitening_db("synth-sfm", synth_root)
    assert len(whiten["qidxs"]) == len(whiten["pidxs"]) and len(whiten["images"]) == len(whiten["cids"])


def test_prepare_generates_missing_synthetic_set(tmp_path, monkeypatch):
    calls = []
    import aml.data.testsets as testsets

    monkeypatch.setattr(testsets, "generate_test_set", lambda root, name: calls.append((root, name)))
    prepare_test_set("synth-paris", tmp_path)
    assert calls == [(tmp_path.resolve(), "synth-paris")]


def test_cid2filename():
    assert cid2filename("abcdef12", "/x") == "/x/12/ef/cd/abcdef12"


def test_generation_shows_a_progress_bar_only_when_asked(tmp_path, capsys):
    from aml.data.synthetic import SyntheticTestConfig, generate_test_set

    tiny = SyntheticTestConfig(landmarks=2, queries_per_landmark=1, easy=1, hard=1, junk=1, distractor_landmarks=1,
                               distractor_views=1, image_size=48)
    generate_test_set(tmp_path, "synth-oxford", tiny, progress=True)
    assert "generating synth-oxford" in capsys.readouterr().err
    generate_test_set(tmp_path / "quiet", "synth-oxford", tiny)
    assert "generating" not in capsys.readouterr().err


def test_two_processes_generating_one_set_at_once_leave_it_whole(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from aml.data.synthetic import SyntheticDistractorConfig, generate_distractor_set; "
            "generate_distractor_set(sys.argv[1], config=SyntheticDistractorConfig(images=400, image_size=32))")
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [run.stderr.read()[-2000:] for run in runs]
    listing = (tmp_path / "test" / "synth-1m" / "synth-1m.txt").read_text().splitlines()
    images = sorted(str(p.relative_to(tmp_path / "test" / "synth-1m" / "jpg"))
                    for p in (tmp_path / "test" / "synth-1m" / "jpg").rglob("*.jpg"))
    assert len(listing) == 400 and sorted(listing) == images
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["synth-1m"]  # no staging folder left


def test_generating_on_a_real_full_disk_ends_in_one_line(small_disk):
    """As run from the shell (``python -m aml.cli.synthetic``): one line, exit status 1, nothing left."""
    import os
    import subprocess
    import sys

    from tests.conftest import fill_disk

    disk = small_disk(1)
    fill_disk(disk, leave=8 << 10)
    done = subprocess.run([sys.executable, "-m", "aml.cli.synthetic", "--data-root", str(disk), "--image-size", "48",
                           "--train-landmarks", "2", "--val-landmarks", "2", "--views", "4", "-q"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 1 and done.stderr.startswith("error: no space left on the device")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["filler"]


def test_an_existing_set_is_said_to_be_kept(synth_root, caplog):
    """Asked again with other sizes, the generator kept the old set without a word."""
    from aml.data.synthetic import SyntheticTestConfig, generate_test_set

    with caplog.at_level("INFO", logger="aml"):
        folder = generate_test_set(synth_root, "synth-oxford", SyntheticTestConfig(image_size=48))
    assert f"{folder} exists: kept as it is (--overwrite makes it again" in caplog.text


def test_a_users_folder_or_file_of_a_synthetic_sets_name_is_not_replaced(tmp_path):
    """A folder test/synth-oxford without the set's gnd (a user's own files) was renamed aside and
    deleted when test.py -d synth-oxford generated the set; a file train/synth-sfm likewise."""


    from aml.data.synthetic import SyntheticTrainConfig, generate_train_set
    from aml.utils.errors import ConfigError

    mine = tmp_path / "test" / "synth-oxford"
    mine.mkdir(parents=True)
    (mine / "my_labels.csv").write_text("precious")
    with pytest.raises(ConfigError, match=rf"{mine} exists and is not a generated set \(it has no "
                                          r"gnd_synth-oxford.pkl\): it is not replaced; move it away"):
        prepare_test_set("synth-oxford", tmp_path)
    assert (mine / "my_labels.csv").read_text() == "precious"
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "synth-sfm").write_text("notes")
    small = SyntheticTrainConfig(train_landmarks=2, val_landmarks=2, views=3, image_size=32)
    with pytest.raises(ConfigError, match="synth-sfm exists and is not a generated set"):
        generate_train_set(tmp_path, "synth-sfm", small)
    assert (tmp_path / "train" / "synth-sfm").read_text() == "notes"
    folder = generate_train_set(tmp_path, "synth-sfm", small, overwrite=True)  # asked for: replaced
    assert (folder / "synth-sfm.pkl").is_file()


def test_fewer_than_two_views_or_landmarks_are_refused_when_parsed(capsys):
    """--views 1 ended in numpy's 'Cannot take a larger sample than population' after the
    test sets were drawn; a split of one landmark gives tuples without negatives."""


    from aml.cli.synthetic import build_parser

    for flag in ("--views", "--train-landmarks", "--val-landmarks"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, "1"])
        assert f"argument {flag}: must be an integer of 2 or more" in capsys.readouterr().err


def test_a_training_config_of_one_view_or_landmark_is_refused_from_python_too(tmp_path):
    from aml.data.synthetic import SyntheticTrainConfig, generate_train_set
    from aml.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"synth-sfm: --views 1: must be an integer of 2 or more"):
        generate_train_set(tmp_path, "synth-sfm", SyntheticTrainConfig(views=1))
    assert not (tmp_path / "train").exists()


def test_varied_aspects_give_a_shape_for_nearly_every_view(tmp_path):
    """--aspects varied: photo-like shapes (any ratio from 2:1 to 1:2 at the longer side asked),
    what a first epoch on a GPU meets; the default draws four shapes."""
    from PIL import Image

    from aml.cli.synthetic import main

    def shapes(root, aspects):
        main(["--data-root", str(root), "--image-size", "96", "--train-landmarks", "3", "--val-landmarks", "2",
              "--views", "8", "--test-landmarks", "1", "--distractors", "1", "--aspects", aspects, "--quiet"])
        sizes = []
        for split in ("train", "val"):
            for path in load_training_db("synth-sfm", split, root)["images"]:
                with Image.open(path) as image:
                    sizes.append(image.size)
        return sizes

    varied = shapes(tmp_path / "varied", "varied")
    assert all(max(size) == 96 and 2 * min(size) >= 96 - 1 for size in varied)
    assert len(set(varied)) >= 0.6 * len(varied) and {w > h for w, h in varied} == {True, False}
    assert len(set(shapes(tmp_path / "four", "four"))) <= 4


def test_an_unknown_way_of_drawing_aspect_ratios_is_refused(capsys):
    from aml.cli.synthetic import build_parser
    from aml.data.synthetic import SyntheticTestConfig, SyntheticTrainConfig
    from aml.utils.errors import ConfigError

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--aspects", "many"])
    assert "argument --aspects: invalid choice: 'many'" in capsys.readouterr().err
    for config in (SyntheticTrainConfig, SyntheticTestConfig):
        with pytest.raises(ConfigError, match="unknown aspect ratios 'many'; choose one of four, varied"):
            config(aspects="many")
