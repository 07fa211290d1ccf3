"""Custom training sets: built from folders or a CSV, reported, and trained on."""

import csv
import json
import shutil

import numpy as np
import pytest

from aml.cli import make_trainset as make_trainset_cli
from aml.cli import train as train_cli
from aml.data.make_trainset import TrainSetError, build_train_set, images_from_csv, images_from_folders
from aml.data.safe_pickle import load_pickle
from aml.data.trainsets import get_train_set, load_training_db


@pytest.fixture(scope="module")
def landmark_folders(synth_root, tmp_path_factory):
    """synth-sfm's train images as a folder per landmark, plus a lonely landmark, a
    duplicate and an unreadable file."""
    root = tmp_path_factory.mktemp("landmarks")
    db = load_training_db("synth-sfm", "train", synth_root)
    for path, cluster in zip(db["images"], db["cluster"]):
        folder = root / f"landmark{cluster:03d}"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(path, folder / f"{len(list(folder.iterdir())):02d}.jpg")
    (root / "lonely").mkdir()
    shutil.copyfile(load_training_db("synth-sfm", "val", synth_root)["images"][0], root / "lonely" / "only.jpg")
    shutil.copyfile(root / "landmark000" / "00.jpg", root / "landmark000" / "copy.jpg")
    (root / "landmark001" / "broken.jpg").write_bytes(b"not an image")
    return root


def test_folders_make_a_set_that_trains(landmark_folders, synth_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_root / "test" / "synth-oxford", data / "test" / "synth-oxford")
    report = make_trainset_cli.main(["--folders", str(landmark_folders), "--name", "mine", "--data-root", str(data),
                                     "--val-fraction", "0.25", "--pairs-per-landmark", "4"])
    printed = capsys.readouterr().out
    assert report.single_landmarks == ["lonely"] and len(report.duplicates) == 1 and len(report.unreadable) == 1
    assert "left out 1 landmarks with a single image: lonely" in printed and "left out 1 duplicates" in printed
    assert report.landmarks == {"train": 12, "val": 4}
    dbs = load_pickle(data / "train" / "mine" / "mine.pkl")
    for split in ("train", "val"):
        db = dbs[split]
        assert len(set(db["cids"])) == len(db["cids"])
        assert all(db["cluster"][q] == db["cluster"][p] and q != p for q, p in zip(db["qidxs"], db["pidxs"]))
        assert len(db["qidxs"]) == 4 * report.landmarks[split]
    train_images = set(load_training_db("mine", "train", data)["images"])
    assert not train_images & set(load_training_db("mine", "val", data)["images"])
    assert get_train_set("mine", data).whitening
    # a network with BatchNorm: the run's test and test.py both encode in eval mode
    run = train_cli.main(["--directory", str(tmp_path / "runs"), "--data-root", str(data), "-d", "mine", "-a",
                          "resnet18", "--not-pretrained", "--image-size", "48", "-nn", "2", "-qs", "10", "-ps", "30",
                          "-b", "5", "-j", "0", "--device", "cpu", "--epochs", "1", "-q", "--test-freq", "1",
                          "-td", "synth-oxford", "--test-whiten", "mine", "--test-image-size", "48"])
    record = json.loads((run.run_dir / "history.json").read_text())[0]
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    assert 0 <= run.history[0]["test"]["symmetric"]["synth-oxford"]["whiten"]["medium"]["map"] <= 1
    from aml.cli import extract_features as extract_cli
    from aml.cli import test as test_cli

    net = str(run.run_dir / "model_epoch1.pth.tar")
    files = extract_cli.main(["-npath", net, "-d", "mine", "-imsize", "48", "-j", "0", "--device", "cpu", "-q",
                              "--data-root", str(data)])
    assert [np.load(f).shape[1] for f in files] == [report.images["train"], report.images["val"]]
    whitened = test_cli.main(["-npath", net, "-d", "synth-oxford", "-w", "mine", "-imsize", "48", "-j", "0",
                              "--device", "cpu", "-q", "--data-root", str(data)])
    # test.py learns the whitening on the new set and scores the epoch's network as the run's test did
    during = run.history[0]["test"]["symmetric"]["synth-oxford"]["whiten"]["medium"]["map"]
    assert whitened["synth-oxford"]["whiten"]["medium"]["map"] == pytest.approx(during, abs=1e-9)


def test_gldv2_csv_and_plain_csv(landmark_folders, tmp_path):
    images = tmp_path / "gld"
    rows = {}
    for folder in sorted(landmark_folders.glob("landmark00*")):
        for k, path in enumerate(sorted(folder.glob("0*.jpg"))[:3]):
            image_id = f"{folder.name[-1]}{k}f{folder.name}{k}"
            target = images / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            rows.setdefault(folder.name, []).append(image_id)
    clean = tmp_path / "train_clean.csv"
    with open(clean, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["landmark_id", "images"])
        for landmark, ids in rows.items():
            writer.writerow([landmark, " ".join(ids)])
    items = images_from_csv(clean, images)
    assert len(items) == 3 * len(rows) and all(path.is_file() for path, _ in items)
    plain = tmp_path / "plain.csv"
    plain.write_text("image,landmark\n" + "".join(f"{p.relative_to(images)},{lm}\n" for p, lm in items))
    assert images_from_csv(plain, images) == items
    spread = tmp_path / "spread.csv"  # a spreadsheet's trailing empty columns, a repeated column left unread
    spread.write_text("image,landmark,notes,notes,,\n" + "".join(f"{p.relative_to(images)},{lm},a,b,,\n"
                                                                  for p, lm in items))
    assert images_from_csv(spread, images) == items
    twice = tmp_path / "twice.csv"
    twice.write_text("image,landmark,landmark\n" + "".join(f"{p.relative_to(images)},{lm},x\n" for p, lm in items))
    with pytest.raises(TrainSetError, match=r"twice.csv: the header names the column 'landmark' twice"):
        images_from_csv(twice, images)
    report = build_train_set(items, "gld", tmp_path / "data", seed=1)
    assert report.landmarks["train"] + report.landmarks["val"] == len(rows)


def test_too_few_landmarks_and_empty_folders_are_refused(tmp_path, landmark_folders):
    with pytest.raises(TrainSetError, match="holds no landmark folders"):
        images_from_folders(tmp_path)
    items = [(p, "one") for p in sorted((landmark_folders / "landmark002").glob("0*.jpg"))]
    with pytest.raises(TrainSetError, match="1 landmarks with two or more"):
        build_train_set(items, "few", tmp_path / "data")
    assert not (tmp_path / "data" / "train" / "few").exists()
    # what was lost on the way is named: a missing image, and the landmark it left alone
    items += [(landmark_folders / "landmark003" / "00.jpg", "two"), (tmp_path / "nope.jpg", "two")]
    with pytest.raises(TrainSetError, match=r"1 landmarks with two or more .*; 1 images unreadable \(e.g. .*nope.jpg\), "
                                            r"1 landmarks of one image \(e.g. two\)$"):
        build_train_set(items, "few", tmp_path / "data")


def test_files_beside_the_landmark_folders_are_named(landmark_folders, tmp_path, caplog):
    """They were left out without a word."""
    shutil.copytree(landmark_folders / "landmark000", tmp_path / "lm" / "L0")
    shutil.copyfile(landmark_folders / "landmark001" / "00.jpg", tmp_path / "lm" / "flat.jpg")
    with caplog.at_level("WARNING", logger="aml.data.make_trainset"):
        found = images_from_folders(tmp_path / "lm")
    assert {landmark for _, landmark in found} == {"L0"}
    assert "1 files of " in caplog.text and "lie beside its landmark folders, not in one (e.g. flat.jpg)" in caplog.text


@pytest.mark.parametrize("landmarks, split, lone", [(4, {"train": 2, "val": 2}, []), (3, {"train": 2, "val": 1}, ["val"]),
                                                    (2, {"train": 1, "val": 1}, ["train", "val"])])
def test_each_split_gets_two_landmarks_where_there_are_four_and_a_lone_one_is_said(landmark_folders, tmp_path,
                                                                                   landmarks, split, lone):
    """Negatives come from other landmarks: a split of one has none. Sets of 4 to 14 landmarks
    held out one for validation."""
    folders = sorted(landmark_folders.glob("landmark0*"))[2:2 + landmarks]
    items = [(path, folder.name) for folder in folders for path in sorted(folder.glob("0*.jpg"))[:3]]
    report = build_train_set(items, "small", tmp_path / "data")
    assert report.landmarks == split
    said = [line for line in report.lines() if "holds one landmark" in line]
    assert [line.split()[2] for line in said] == lone
    assert all("tuples get no negatives" in line and "4 landmarks give each split two" in line for line in said)


def test_a_training_set_name_is_one_folder_name(landmark_folders, tmp_path):
    with pytest.raises(SystemExit) as info:
        make_trainset_cli.main(["--folders", str(landmark_folders), "--name", "../../x", "--data-root",
                                str(tmp_path / "root")])
    assert "--name: '../../x' cannot name a data set" in str(info.value.code) and not (tmp_path / "root").exists()


def test_a_full_disk_ends_make_trainset_in_one_line(landmark_folders, tmp_path, full_disk):
    full_disk(tmp_path / "data")
    with pytest.raises(SystemExit) as info:
        make_trainset_cli.main(["--folders", str(landmark_folders), "--name", "mine", "--data-root",
                                str(tmp_path / "data")])
    assert str(info.value.code).startswith("error: no space left on the device for ")
    assert not (tmp_path / "data" / "train" / "mine").exists()


@pytest.mark.parametrize("content, message", [
    (b"landmark_id,images\n1\n", "line 2 has no images; give both on every line"),
    (b"landmark,image\n1\n2,a.jpg\n", "line 2 has no image; give both on every line"),
    (b"image,landmark\n,3\n", "line 2 has no image; give both on every line"),
    (b"image,landmark\n\xff\xfe.jpg,1\n", "is not UTF-8 text (byte 15: invalid start byte); save it as UTF-8"),
])
def test_a_csv_with_short_rows_or_other_bytes_is_one_line(tmp_path, content, message, capsys):
    """Short rows ended in AttributeError or TypeError, other bytes in UnicodeDecodeError."""
    path = tmp_path / "mine.csv"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as info:
        make_trainset_cli.main(["--csv", str(path), "--images", str(tmp_path), "--name", "x",
                                "--data-root", str(tmp_path / "root")])
    said = str(info.value.code)
    assert said.startswith("error: ") and str(path) in said and said.endswith(message) and "\n" not in said


def test_a_csv_larger_than_any_is_refused(tmp_path, monkeypatch):
    """A huge file given as the CSV (or /dev/zero) was read whole: out of memory or a hang."""
    from aml.utils import text_files

    monkeypatch.setattr(text_files, "MAX_TEXT_BYTES", 1 << 10)
    path = tmp_path / "huge.csv"
    path.write_bytes(b"image,landmark\n" + b"a.jpg,1\n" * 200)
    with pytest.raises(SystemExit) as info:
        make_trainset_cli.main(["--csv", str(path), "--images", str(tmp_path), "--name", "x",
                                "--data-root", str(tmp_path / "root")])
    assert str(info.value.code) == (f"error: the CSV {path} is larger than 1024 bytes or has no end (a device, a pipe "
                                    "that does not close): give a CSV with columns image,landmark (UTF-8)")


def test_csv_spellings_and_hidden_files_keep_their_meaning(landmark_folders, tmp_path):
    """A landmark id written ' 1' was another landmark than '1' (its images mined as negatives of
    each other); Excel's BOM hid the first column; a photo manager's hidden thumbnails became
    training images; a GLDv2 landmark of thousands of images ended in csv's field-size error."""
    images = sorted((landmark_folders / "landmark003").glob("0*.jpg"))[:2]
    path = tmp_path / "mine.csv"
    path.write_text(f"\ufeffimage, landmark\n{images[0]},1\n{images[1]}, 1\n", encoding="utf-8")
    assert images_from_csv(path, tmp_path) == [(images[0], "1"), (images[1], "1")]
    folders = tmp_path / "folders"
    for name in ("a", "b", ".thumbnails"):
        (folders / name / ".cache").mkdir(parents=True)
        for k, image in enumerate(images):
            shutil.copyfile(image, folders / name / f"{k}.jpg")
        shutil.copyfile(images[0], folders / name / ".cache" / "0.jpg")
        (folders / name / "Thumbs.db").write_bytes(b"\0")
    assert [(p.relative_to(folders).as_posix(), lm) for p, lm in images_from_folders(folders)] == [
        ("a/0.jpg", "a"), ("a/1.jpg", "a"), ("a/Thumbs.db", "a"), ("b/0.jpg", "b"), ("b/1.jpg", "b"),
        ("b/Thumbs.db", "b")]  # a file that is not an image: reported as unreadable
    clean = tmp_path / "train_clean.csv"
    clean.write_text("landmark_id,images\n7," + " ".join(f"{k:016x}" for k in range(8000)) + "\n")
    with pytest.raises(TrainSetError, match=r"none of the 8000 images could be read .*e.g. .*0000000000000000; check "
                                            r"the image folder \(--images, --folders\)"):
        build_train_set(images_from_csv(clean, tmp_path / "nowhere"), "gld", tmp_path / "data")


@pytest.mark.parametrize("name", ["Synth-SFM", "retrieval-sfm-120k"])
def test_a_name_that_main_py_reads_as_a_registered_set_is_refused(landmark_folders, tmp_path, name):
    with pytest.raises(TrainSetError, match=rf"--name {name}: main.py -d {name} means the registered set"):
        build_train_set(images_from_folders(landmark_folders), name, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_landmark_ids_that_differ_by_case_alone_are_named(landmark_folders, tmp_path, caplog):
    items = [(p, "Eiffel") for p in sorted((landmark_folders / "landmark002").glob("0*.jpg"))]
    items += [(p, "eiffel") for p in sorted((landmark_folders / "landmark003").glob("0*.jpg"))]
    with caplog.at_level("WARNING", logger="aml.data.make_trainset"):
        build_train_set(items, "cased", tmp_path / "data")
    assert "landmarks 'Eiffel' and 'eiffel' differ by case alone" in caplog.text


def test_a_test_set_and_a_training_set_never_share_feature_files(landmark_folders, synth_root, tmp_path):
    """A test set named mine-val wrote extract_features.py's files of training set mine's val split
    (each replacing the other); one named mine was never encoded (-d mine read the training set)."""
    from aml.data.make_testset import TestSetError, build_test_set

    data = tmp_path / "data"
    build_train_set(images_from_folders(landmark_folders), "mine", data)
    nothing = {"queries": [], "database": None}
    with pytest.raises(TestSetError, match=r"--name mine: a training set of that name is in .*extract_features.py -d "
                                           r"mine would encode instead"):
        build_test_set(nothing, tmp_path, "mine", data)
    with pytest.raises(TestSetError, match=r"--name mine-val: its feature files would be those of training set mine's "
                                           r"val split \(mine-val_NETWORK.npy\)"):
        build_test_set(nothing, tmp_path, "mine-val", data)
    shutil.copytree(synth_root / "test" / "synth-oxford", data / "test" / "theirs-val")
    (data / "test" / "theirs-val" / "gnd_synth-oxford.pkl").rename(data / "test" / "theirs-val" / "gnd_theirs-val.pkl")
    for name, shared in (("theirs", "the feature files of theirs's val split"), ("theirs-val", "its name"),
                         ("rOxford5k", "its name")):
        with pytest.raises(TrainSetError, match=rf"--name {name}: the test set \S+ would share {shared}"):
            build_train_set([], name, data)
    assert sorted(p.name for p in (data / "train").iterdir()) == ["mine"]


def test_contradictory_flags_and_the_hint_of_another_data_root(landmark_folders, tmp_path, capsys):
    """--images beside --folders, and --split for test sets only, were ignored without a word;
    the closing hint left out --data-root, so it failed as printed."""
    with pytest.raises(SystemExit):
        make_trainset_cli.main(["--folders", str(landmark_folders), "--images", str(tmp_path), "--name", "x"])
    assert "--folders names its images itself: leave --images out" in capsys.readouterr().err
    from aml.cli import extract_features as extract_cli

    with pytest.raises(SystemExit):
        extract_cli.main(["-noff", "resnet18-gem", "-d", "synth-oxford", "--split", "val", "--data-root",
                          str(tmp_path)])
    assert "--split val chooses a training set's splits; synth-oxford holds test sets only" in capsys.readouterr().err
    make_trainset_cli.main(["--folders", str(landmark_folders), "--name", "mine", "--data-root", str(tmp_path / "d")])
    assert f"python main.py -d mine --data-root {tmp_path / 'd'} ..." in capsys.readouterr().out


@pytest.mark.parametrize("linked", [False, True], ids=["folder", "link"])
def test_the_data_root_under_the_landmark_folders_is_no_landmark(landmark_folders, tmp_path, caplog, linked):
    """With --folders . and the default ./data, a second set took the data root for a landmark
    called 'data': the first set's copies of every landmark's images were one landmark, kept
    before the originals (which were left out as their duplicates)."""
    folders = tmp_path / "lm"
    for landmark in ("landmark000", "landmark001", "landmark002", "landmark003", "landmark004"):
        shutil.copytree(landmark_folders / landmark, folders / landmark)
    root = folders / "data"
    if linked:  # ./data -> a scratch disk: walked into as a folder, the same
        (tmp_path / "scratch").mkdir()
        root.symlink_to(tmp_path / "scratch")
    first = build_train_set(images_from_folders(folders, root), "first", root, seed=1)
    with caplog.at_level("WARNING", logger="aml.data.make_trainset"):
        found = images_from_folders(folders, root)
    assert {landmark for _, landmark in found} == {f"landmark00{k}" for k in range(5)}
    assert "lie in the data root" in caplog.text and "(train) and are left out" in caplog.text
    second = build_train_set(found, "second", root, seed=1)
    assert second.landmarks == first.landmarks and second.duplicates == first.duplicates


def test_a_file_systems_lost_and_found_is_no_landmark(tmp_path):
    """A mount's lost+found (root's alone) was listed as a landmark, or refused the set."""
    for name in ("eiffel/1.jpg", "louvre/2.jpg", "lost+found/#1234"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    assert sorted({landmark for _, landmark in images_from_folders(tmp_path)}) == ["eiffel", "louvre"]
