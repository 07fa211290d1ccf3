"""Dataset pickles of the wrong shape (a gnd, a training or whitening db) are named in one
line with the field at fault, never a TypeError or AttributeError from deep inside."""

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from aml.data.safe_pickle import DatasetFileError, load_pickle, save_pickle
from aml.data.testsets import configdataset, get_test_set
from aml.data.trainsets import load_training_db, load_whitening_db


def _set(gnd, key, value):
    gnd[key] = value


def _entry(q, key, value):
    return lambda gnd: gnd["gnd"][q].__setitem__(key, value)


GND_DAMAGES = {
    "a list, not a dict": (lambda gnd: [gnd], r"holds a list, not a dict of imlist, qimlist and gnd"),
    "imlist an int": (lambda gnd: _set(gnd, "imlist", 5), r"'imlist' holds int 5, where a list of image names"),
    "a name an int": (lambda gnd: gnd["qimlist"].__setitem__(1, 7), r"'qimlist' holds int 7, where a list of image"),
    "gnd a dict": (lambda gnd: _set(gnd, "gnd", {"easy": []}), r"'gnd' holds dict .*, where a list of one entry"),
    "entry an int": (lambda gnd: gnd["gnd"].__setitem__(2, 3), r"query 2 \(.*\) has int 3 for its entry"),
    "easy a dict": (_entry(0, "easy", {"a": 1}), r"query 0 .* has dict \{'a': 1\} in 'easy', where a list of database"),
    "easy names": (_entry(1, "hard", ["a.jpg"]), r"query 1 .* has list \['a.jpg'\] in 'hard'"),
    "easy ragged": (_entry(0, "junk", [[1, 2], [3]]), r"query 0 .* has list \[\[1, 2\], \[3\]\] in 'junk'"),
    "easy floats": (_entry(0, "easy", [1.0, 2.5]), r"query 0 .* has list \[1.0, 2.5\] in 'easy'"),
    "easy and junk": (lambda gnd: gnd["gnd"][0].__setitem__("junk", [*gnd["gnd"][0]["junk"], gnd["gnd"][0]["easy"][0]]),
                      r"query 0 .* lists database image \d+ in both 'easy' and 'junk'; each image has one label"),
    "easy twice": (lambda gnd: gnd["gnd"][1]["easy"].append(gnd["gnd"][1]["easy"][0]),
                   r"query 1 .* lists database image \d+ twice in 'easy'"),
    "box text": (_entry(0, "bbx", "abc"), r"query 0 .* has box str 'abc'; a box is x1, y1, x2, y2"),
    "box a dict": (_entry(0, "bbx", {"x": 1}), r"query 0 .* has box dict \{'x': 1\}"),
    "box of 3": (_entry(0, "bbx", [1, 2, 3]), r"query 0 .* has box list \[1, 2, 3\]"),
}


@pytest.fixture
def gnd_path(synth_root, tmp_path):
    path = tmp_path / "test" / "synth-oxford" / "gnd_synth-oxford.pkl"
    path.parent.mkdir(parents=True)
    save_pickle(load_pickle(synth_root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl"), path)
    return path


@pytest.mark.parametrize("damage, message", GND_DAMAGES.values(), ids=GND_DAMAGES.keys())
def test_a_malformed_gnd_is_named_with_its_field(gnd_path, damage, message):
    gnd = load_pickle(gnd_path)
    gnd["gnd"] = [dict(entry, easy=list(entry["easy"])) for entry in gnd["gnd"]]
    damaged = damage(gnd)
    save_pickle(damaged if damaged is not None else gnd, gnd_path)
    with pytest.raises(DatasetFileError, match=f"{gnd_path}.*{message}"):
        configdataset("synth-oxford", gnd_path.parent.parent)


def test_a_gnd_whose_lists_are_columns_is_read_as_scoring_reads_it(gnd_path):
    """Lists read from a .mat file (scipy.io.loadmat) come as n x 1 arrays, which scoring flattens."""
    gnd = load_pickle(gnd_path)
    gnd["gnd"] = [{**entry, **{k: np.asarray(entry[k]).reshape(-1, 1) for k in ("easy", "hard", "junk")}}
                  for entry in gnd["gnd"]]
    save_pickle(gnd, gnd_path)
    assert len(configdataset("synth-oxford", gnd_path.parent.parent)["gnd"]) == len(gnd["gnd"])


@pytest.mark.parametrize("content", [[1, 2], {"gnd": 5}, {"gnd": [7]}, {"gnd": [{3: [], "x": []}]}],
                         ids=["list", "gnd-int", "entry-int", "keys-of-two-types"])
def test_a_custom_set_whose_gnd_is_malformed_is_named(tmp_path, content):
    folder = tmp_path / "test" / "mine"
    (folder / "jpg").mkdir(parents=True)
    save_pickle(content, folder / "gnd_mine.pkl")
    with pytest.raises(DatasetFileError, match=r"gnd_mine.pkl: its entries hold .*; a gnd needs easy/hard/junk"):
        get_test_set("mine", tmp_path)


def _split(key, value):
    return lambda dbs: dbs["train"].__setitem__(key, value)


DB_DAMAGES = {
    "a list": (lambda dbs: [dbs], r"synth-sfm.pkl has no split 'train' \(found list"),
    "split a list": (lambda dbs: dbs.__setitem__("train", [1]), r"synth-sfm.pkl \(train\) holds list \[1\], not an "
                                                                r"image db with cids, qidxs, pidxs, cluster"),
    "no cluster": (lambda dbs: dbs["train"].pop("cluster") and None,
                   r"holds \['cids', 'pidxs', 'qidxs'\], not an image db"),
    "cids an int": (_split("cids", 5), r"'cids' holds int 5, where a list of image ids"),
    "qidxs names": (_split("qidxs", ["a"]), r"'qidxs' holds list \['a'\], where a list of integers in \[0, \d+\)"),
    "pidxs outside": (_split("pidxs", [10 ** 6]), r"'pidxs' holds list \[1000000\], where a list of integers in"),
    "cluster short": (_split("cluster", [0]), r"\d+ clusters for \d+ images; they must pair up one to one"),
    # nested lists of the right length passed, and failed later in a traceback
    "qidxs nested": (lambda dbs: dbs["train"].__setitem__("qidxs", [[q] for q in dbs["train"]["qidxs"]]),
                     r"'qidxs' holds list \[\[\d+\], .*where a list of integers in \[0, \d+\)"),
    "pairs unequal": (_split("qidxs", [0]), r"1 qidxs for \d+ pidxs"),
}


@pytest.mark.parametrize("damage, message", DB_DAMAGES.values(), ids=DB_DAMAGES.keys())
def test_a_malformed_training_db_is_named_with_its_field(synth_root, tmp_path, damage, message):
    folder = tmp_path / "train" / "synth-sfm"
    (folder / "ims").mkdir(parents=True)
    dbs = copy.deepcopy(load_pickle(synth_root / "train" / "synth-sfm" / "synth-sfm.pkl"))
    damaged = damage(dbs)
    save_pickle(damaged if isinstance(damaged, list) else dbs, folder / "synth-sfm.pkl")
    with pytest.raises(DatasetFileError, match=message):
        load_training_db("synth-sfm", "train", tmp_path)


def test_a_malformed_whitening_db_is_named(synth_root, tmp_path):
    folder = tmp_path / "train" / "synth-sfm"
    (folder / "ims").mkdir(parents=True)
    save_pickle({"cids": ["a", "b"], "qidxs": [0], "pidxs": np.array([2])}, folder / "synth-sfm-whiten.pkl")
    with pytest.raises(DatasetFileError, match=r"synth-sfm-whiten.pkl: 'pidxs' holds ndarray array\(\[2\]\), where a "
                                               r"list of integers in \[0, 2\)"):
        load_whitening_db("synth-sfm", tmp_path)


def test_a_custom_set_is_found_in_the_folder_the_config_is_given(synth_root, tmp_path):
    """cirtorch's configdataset(dataset, dir_main) looks in dir_main, whatever its name (it used
    to look in <parent of dir_main>/test)."""
    from aml.data.testsets import read_test_set

    folder = tmp_path / "sets" / "mine"
    folder.mkdir(parents=True)
    (folder / "jpg").symlink_to(synth_root / "test" / "synth-oxford" / "jpg", target_is_directory=True)
    save_pickle(load_pickle(synth_root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl"), folder / "gnd_mine.pkl")
    cfg = configdataset("mine", tmp_path / "sets")
    assert (cfg["dataset"], cfg["protocol"], cfg["dir_data"]) == ("mine", "revisited", str(folder))
    assert read_test_set("mine", tmp_path / "sets")["imlist"] == cfg["imlist"]


def test_the_readers_of_a_folder_read_what_those_of_the_data_root_read(synth_root):
    from aml.data.distractors import distractor_images, read_distractor_list
    from aml.data.synthetic import SyntheticDistractorConfig, generate_distractor_set
    from aml.data.testsets import read_test_set
    from aml.data.trainsets import read_whitening_db

    generate_distractor_set(synth_root, "synth-1m", SyntheticDistractorConfig(images=150, image_size=64))
    cfg = read_test_set("synth-paris", synth_root / "test")
    assert cfg["imlist"] == configdataset("synth-paris", synth_root / "test")["imlist"] and cfg["n"] > 0
    assert read_distractor_list("synth1m", synth_root / "test") == distractor_images("synth1m", synth_root)
    assert read_whitening_db("synth-sfm", synth_root / "train") == load_whitening_db("synth-sfm", synth_root)


@pytest.mark.parametrize("line", ["../../../../etc/hosts", "/etc/hosts", "a/../../b.jpg"])
def test_a_distractor_list_names_only_images_of_its_set(tmp_path, line):
    """A list naming files outside the set's jpg/ had them read as distractors."""
    from aml.data.distractors import DISTRACTOR_SETS, read_distractor_list
    from aml.utils.errors import DataError

    name = DISTRACTOR_SETS["synth1m"].folder
    (tmp_path / name / "jpg").mkdir(parents=True)
    (tmp_path / name / f"{name}.txt").write_bytes(f"a.jpg\n{line}\n".encode())
    with pytest.raises(DataError, match=rf"{name}.txt lists {line}, which is not inside .*jpg"):
        read_distractor_list("synth1m", tmp_path)


def test_a_distractor_list_of_words_that_are_no_image_names_is_refused(tmp_path):
    """A portal's page installed as the list was read as its words: an evaluation with
    --skip-bad-images then searched '+1M' without one distractor."""
    from aml.data.distractors import DISTRACTOR_SETS, read_distractor_list
    from aml.utils.errors import DataError

    name = DISTRACTOR_SETS["synth1m"].folder
    (tmp_path / name / "jpg").mkdir(parents=True)
    (tmp_path / name / f"{name}.txt").write_text("<!-- captive portal -->\n<p>Sign in</p>\n")
    with pytest.raises(DataError, match=rf"{name}.txt lists '<!--', which is not an image file name: .*a web page"):
        read_distractor_list("synth1m", tmp_path)


def test_a_distractor_list_of_other_bytes_is_read_as_names(tmp_path):
    from aml.data.distractors import DISTRACTOR_SETS, read_distractor_list

    name = DISTRACTOR_SETS["synth1m"].folder
    (tmp_path / name / "jpg").mkdir(parents=True)
    (tmp_path / name / f"{name}.txt").write_bytes(b"a.jpg\ncaf\xe9.jpg\n")
    assert [p.split("/")[-1] for p in read_distractor_list("synth1m", tmp_path)] == ["a.jpg", "caf\udce9.jpg"]


def test_a_revisited_sets_images_stay_found_after_the_data_root_moves(tmp_path, monkeypatch):
    """roxford5k/jpg was an absolute link to oxford5k/jpg: after `mv data /big/data` it dangled
    and preparing the set again ended in a FileExistsError traceback."""
    from aml.data import testsets

    monkeypatch.setattr(testsets, "download_file", lambda url, path, progress=False: path)  # the gnd is there
    test_root = tmp_path / "data" / "test"
    (test_root / "oxford5k" / "jpg").mkdir(parents=True)
    (test_root / "oxford5k" / "jpg" / "all_souls_000000.jpg").write_bytes(b"jpeg")
    prepare = testsets.TEST_SETS["roxford5k"].prepare
    prepare(test_root, False)
    link = test_root / "roxford5k" / "jpg"
    assert not Path(os.readlink(link)).is_absolute()
    moved = tmp_path / "big" / "data"
    moved.parent.mkdir()
    (tmp_path / "data").rename(moved)
    assert (moved / "test" / "roxford5k" / "jpg" / "all_souls_000000.jpg").read_bytes() == b"jpeg"
    dangling = moved / "test" / "roxford5k" / "jpg"
    dangling.unlink()
    dangling.symlink_to(tmp_path / "data" / "test" / "oxford5k" / "jpg")  # as earlier versions linked it
    prepare(moved / "test", False)
    assert (dangling / "all_souls_000000.jpg").read_bytes() == b"jpeg"


def test_sfm_30k_shares_120k_images_after_the_data_root_moves(tmp_path, monkeypatch):
    """retrieval-SfM-30k/ims was an absolute link to 120k's: after `mv data /big/data` it
    dangled and `-w retrieval-SfM-30k` ended in a FileExistsError traceback."""
    from aml.data import trainsets

    monkeypatch.setattr(trainsets, "download_file", lambda url, path, progress=False: path)  # the pickles are there
    train_root = tmp_path / "data" / "train"
    (train_root / "retrieval-SfM-120k" / "ims" / "aa").mkdir(parents=True)
    (train_root / "retrieval-SfM-120k" / "ims" / "aa" / "x").write_bytes(b"jpeg")
    link = train_root / "retrieval-SfM-30k" / "ims"
    link.parent.mkdir()
    link.symlink_to(train_root / "retrieval-SfM-120k" / "ims")  # as earlier versions linked it
    moved = tmp_path / "big" / "data"
    moved.parent.mkdir()
    (tmp_path / "data").rename(moved)
    trainsets._download_sfm(moved / "train", False)
    assert (moved / "train" / "retrieval-SfM-30k" / "ims" / "aa" / "x").read_bytes() == b"jpeg"
    assert not Path(os.readlink(moved / "train" / "retrieval-SfM-30k" / "ims")).is_absolute()


def test_a_training_set_without_a_val_split_names_the_fix(synth_root, tmp_path):
    folder = tmp_path / "train" / "synth-sfm"
    (folder / "ims").mkdir(parents=True)
    dbs = load_pickle(synth_root / "train" / "synth-sfm" / "synth-sfm.pkl")
    save_pickle({"train": dbs["train"]}, folder / "synth-sfm.pkl")
    with pytest.raises(DatasetFileError, match=r"synth-sfm.pkl has no split 'val' \(found \['train'\]\); train without "
                                               r"validation \(--no-val\), or make the set again"):
        load_training_db("synth-sfm", "val", tmp_path)


def test_a_training_set_missing_one_of_its_pickles_is_prepared_again_or_named(tmp_path, synth_root):
    """One pickle of a set was taken for the set: a retrieval-SfM-120k download stopped after
    its first pickle (or one deleted as damaged) was never fetched again, and a generated set
    lacking one ended later in 'dataset file ... is missing'."""
    import shutil

    from aml.data.trainsets import TrainSet, _prepared
    from aml.utils.errors import MissingFile

    folder = tmp_path / "train" / "retrieval-SfM-120k"
    (folder / "ims").mkdir(parents=True)
    (folder / "retrieval-SfM-120k-whiten.pkl").write_bytes(b"whitening pairs")
    fetched = []

    def download(train_root, progress):  # fetches what is missing, as _download_sfm's download_file does
        fetched.append(train_root)
        (train_root / "retrieval-SfM-120k" / "retrieval-SfM-120k.pkl").write_bytes(b"train and val")

    entry = TrainSet("retrieval-SfM-120k", "retrieval-SfM-120k", download)
    assert entry.pickles() == ["retrieval-SfM-120k.pkl", "retrieval-SfM-120k-whiten.pkl"]
    assert entry.pickles("whitening") == ["retrieval-SfM-120k-whiten.pkl"]
    assert _prepared(entry, tmp_path / "train", entry.pickles()) == folder and fetched == [tmp_path / "train"]
    assert _prepared(entry, tmp_path / "train", entry.pickles()) == folder and len(fetched) == 1  # not fetched again
    generated = shutil.copytree(synth_root / "train" / "synth-sfm", tmp_path / "train" / "synth-sfm")
    (generated / "synth-sfm-whiten.pkl").unlink()
    synth = TrainSet("synth-sfm", "synth-sfm", lambda root, progress: None)  # generating keeps a generated set
    assert _prepared(synth, tmp_path / "train", synth.pickles("training")) == generated  # training needs no more
    from aml.data.trainsets import prepare_train_set

    assert prepare_train_set("synth-sfm", tmp_path, "training") == generated  # as main.py prepares its set
    with pytest.raises(MissingFile, match=r"synth-sfm lacks synth-sfm-whiten.pkl of the set synth-sfm: delete the "
                                          r"folder to make it again"):
        _prepared(synth, tmp_path / "train", synth.pickles())
    custom = TrainSet("mine", "mine", None, whitening=False)
    with pytest.raises(MissingFile, match=r"mine lacks ims, mine.pkl; make it again with python -m "
                                          r"aml.cli.make_trainset"):
        _prepared(custom, tmp_path / "train", custom.pickles())
