"""Custom test sets: built from a description, checked, found by name by test.py."""

import csv
import re
import shutil

import numpy as np
import pytest
import torch

from aml.cli import make_testset as make_testset_cli
from aml.cli import test as test_cli
from aml.data.make_testset import TestSetError, build_test_set, read_description
from aml.data.safe_pickle import load_pickle
from aml.data.testsets import get_test_set
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint


def mirror_csv(synth_root, path):
    """A CSV description of synth-oxford, and its database list."""
    gnd = load_pickle(synth_root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    names = [f"{n}.jpg" for n in gnd["imlist"]]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "box", "easy", "hard", "junk"])
        for q, entry in enumerate(gnd["gnd"]):
            writer.writerow([f"{gnd['qimlist'][q]}.jpg", " ".join(str(c) for c in entry["bbx"])]
                            + [" ".join(names[i] for i in entry[key]) for key in ("easy", "hard", "junk")])
    database = path.with_name("database.txt")
    database.write_text("\n".join(names) + "\n")
    return path, database, gnd


def test_a_set_made_from_a_csv_scores_as_the_set_it_mirrors(synth_root, tmp_path, capsys):
    description, database, gnd = mirror_csv(synth_root, tmp_path / "mirror.csv")
    root = tmp_path / "root"
    make_testset_cli.main([str(description), "--images", str(synth_root / "test" / "synth-oxford" / "jpg"),
                           "--name", "mirror", "--database", str(database), "--data-root", str(root)])
    assert f"evaluate with: python test.py -d mirror --data-root {root} ..." in capsys.readouterr().out
    assert get_test_set("mirror", root).protocol == "revisited"
    made = load_pickle(root / "test" / "mirror" / "gnd_mirror.pkl")
    assert made["imlist"] == gnd["imlist"] and made["qimlist"] == gnd["qimlist"]
    torch.manual_seed(0)
    net = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "n.pth")
    common = ["-npath", str(net), "-imsize", "64", "-j", "0", "--device", "cpu", "-q", "--no-cache"]
    ours = test_cli.main(common + ["-d", "mirror", "--data-root", str(root)])["mirror"]["plain"]
    theirs = test_cli.main(common + ["-d", "synth-oxford", "--data-root", str(synth_root)])["synth-oxford"]["plain"]
    for level in ("easy", "medium", "hard"):
        assert ours[level]["map"] == pytest.approx(theirs[level]["map"], abs=1e-12)
    from aml.cli import extract_features as extract_cli

    files = extract_cli.main(["-npath", str(net), "-d", "mirror", "-imsize", "64", "-j", "0", "--device", "cpu", "-q",
                              "--data-root", str(root)])
    assert files[0].name.startswith("mirror_n-") and np.load(files[0]).shape[1] == len(gnd["imlist"])


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, name in enumerate(("q.jpg", "a.jpg", "b.jpg", "c.png")):  # four pictures, not copies of one
        Image.new("RGB", (40, 30), (10 + 40 * k, 20, 30)).save(folder / name)
    return folder


@pytest.mark.parametrize("query, message", [
    ({"image": "q.jpg", "easy": ["a.jpg"], "hard": ["a.jpg"]}, "lists a.jpg in both 'easy' and 'hard'"),
    ({"image": "zzz.jpg", "easy": ["a.jpg"]}, r"1 images missing or unreadable: zzz.jpg is not a file in .*imgs; fix "
                                              r"the names \(the description's or --database's\), --images, or the files"),
    ({"image": "q.jpg", "easy": ["a.jpg"], "box": [0, 0, 50, 10]}, r"has box \[0, 0, 50, 10\], outside its 40x30 image"),
    ({"image": "q.jpg", "ok": ["a.jpg"], "easy": ["b.jpg"]}, "mix of classic"),
])
def test_bad_descriptions_are_refused_before_anything_is_written(images, tmp_path, query, message):
    with pytest.raises(TestSetError, match=message):
        build_test_set({"queries": [query], "database": None}, images, "mine", tmp_path / "root")
    assert not (tmp_path / "root" / "test" / "mine").exists()


def test_positive_outside_the_database_and_existing_sets(images, tmp_path):
    with pytest.raises(TestSetError, match="lists q.jpg in 'easy', but it is not in the database"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["q.jpg"]}], "database": None}, images, "x", tmp_path)
    folder = build_test_set({"queries": [{"image": "q.jpg", "ok": ["a.jpg"], "junk": ["c.png"]}], "database": None},
                            images, "classic", tmp_path)
    made = load_pickle(folder / "gnd_classic.pkl")
    assert made["imlist"] == ["a", "b", "c"] and made["gnd"][0]["ok"] == [0] and made["gnd"][0]["junk"] == [2]
    assert get_test_set("classic", tmp_path).protocol == "classic"
    from PIL import Image

    with Image.open(folder / "jpg" / "c.jpg") as converted:
        assert converted.format == "JPEG"  # the PNG was converted
    with pytest.raises(TestSetError, match="already exists"):
        build_test_set({"queries": [{"image": "q.jpg", "ok": ["a.jpg"]}], "database": None}, images, "classic",
                       tmp_path)


def test_json_description_and_one_line_errors(images, tmp_path, capsys):
    import json

    path = tmp_path / "set.json"
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"], "hard": [], "junk": []}]}))
    assert read_description(path)["queries"][0]["easy"] == ["a.jpg"]
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["nope.jpg"]}], "database": ["a.jpg", "nope.jpg"]}))
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(path), "--images", str(images), "--name", "x", "--data-root", str(tmp_path)])
    assert str(info.value.code).startswith("error: ") and "nope.jpg is not a file in" in str(info.value.code)
    # the CSV given as --database by mistake: its long lines ended in a raw OSError, blamed on the description
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}]}))
    csv_file = tmp_path / "queries.csv"
    csv_file.write_text("query,box,easy,hard,junk\n" + "q.jpg,1 2 3 4," + " ".join(["a.jpg"] * 60) + ",,\n")
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(path), "--images", str(images), "--name", "x", "--data-root", str(tmp_path),
                               "--database", str(csv_file)])
    assert f"error: {path} with --database {csv_file}: " in str(info.value.code)
    assert "is not a file name (File name too long)" in str(info.value.code)
    shutil.rmtree(images)


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".hidden", "oxford+1m", ""])
def test_a_set_name_is_one_folder_name(images, tmp_path, name):
    import json

    path = tmp_path / "set.json"
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"], "hard": [], "junk": []}]}))
    root = tmp_path / "root"
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(path), "--images", str(images), "--name", name, "--data-root", str(root)])
    assert f"error: --name: {name!r} cannot name a data set" in str(info.value.code)
    assert not root.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["set.json", images.name])


def test_a_truncated_image_and_a_non_utf8_description_are_named(images, tmp_path):
    import json

    (images / "a.jpg").write_bytes((images / "a.jpg").read_bytes()[:-200])  # the header still reads
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"], "hard": [], "junk": []}]}))
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(path), "--images", str(images), "--name", "x", "--data-root", str(tmp_path / "r")])
    assert "1 images missing or unreadable" in str(info.value.code) and "a.jpg is corrupt" in str(info.value.code)
    latin = tmp_path / "set.csv"
    latin.write_bytes("query,easy\nq.jpg,caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(latin), "--images", str(images), "--name", "x", "--data-root", str(tmp_path / "r")])
    assert f"error: the description {latin} is not UTF-8 text" in str(info.value.code)


def test_a_full_disk_ends_make_testset_in_one_line(images, tmp_path, full_disk):
    import json

    path = tmp_path / "set.json"
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"], "hard": [], "junk": []}]}))
    full_disk(tmp_path / "root")
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(path), "--images", str(images), "--name", "x", "--data-root",
                               str(tmp_path / "root")])
    assert str(info.value.code).startswith("error: no space left on the device for ")
    assert not (tmp_path / "root" / "test" / "x").exists()


WRONG_TYPES = {
    "a list": ([{"image": "q.jpg"}], r"expected an object whose 'queries' is a list of queries .*found list"),
    "queries an int": ({"queries": 5}, r"expected an object whose 'queries' is a list .*found int 5"),
    "no queries": ({"database": ["a.jpg"]}, r"expected an object whose 'queries' is a list .*found NoneType"),
    "a query a string": ({"queries": ["q.jpg"]}, r"query 0 is str 'q.jpg', not an object with 'image'"),
    "image a number": ({"queries": [{"image": 5}]}, r"query 0: 'image' is int 5, not an image name"),
    "easy a string": ({"queries": [{"image": "q.jpg", "easy": "a.jpg"}]}, r"'easy' is str 'a.jpg', not a list of"),
    "easy of numbers": ({"queries": [{"image": "q.jpg", "easy": [1]}]}, r"'easy' is list \[1\], not a list of image"),
    "box text": ({"queries": [{"image": "q.jpg", "box": "0 0 5 5"}]}, r"'box' is str '0 0 5 5', not four numbers"),
    "box of text": ({"queries": [{"image": "q.jpg", "box": [0, 0, "5", 5]}]}, r"'box' is list \[0, 0, '5', 5\]"),
    "database a dict": ({"queries": [{"image": "q.jpg"}], "database": {"a": 1}}, r"'database' is dict \{'a': 1\}"),
}


@pytest.mark.parametrize("content, message", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_json_of_the_wrong_types_ends_in_one_line_naming_the_field(images, tmp_path, content, message):
    import json

    path = tmp_path / "set.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(path), "--images", str(images), "--name", "x", "--data-root", str(tmp_path / "r")])
    assert str(info.value.code).startswith(f"error: {path}") and len(str(info.value.code).splitlines()) == 1
    assert re.search(message, str(info.value.code)), info.value.code
    if isinstance(content, dict) and isinstance(content.get("queries"), list):
        with pytest.raises(TestSetError, match=message):  # the library call checks the same
            build_test_set(content, images, "x", tmp_path / "r", source=str(path))
    assert not (tmp_path / "r").exists()


def test_a_csv_box_that_is_not_numbers_is_named(images, tmp_path):
    path = tmp_path / "set.csv"
    path.write_text("query,box,easy\n\nq.jpg,0 0 five 5,a.jpg\n")  # named by its line, blank lines counted
    with pytest.raises(TestSetError, match=r"set.csv: line 3 \(q.jpg\) has box '0 0 five 5'; a box is four numbers"):
        read_description(path)
    path.write_text("query,box,easy\nq.jpg,,a.jpg\n\n\n,0 0 5 5,a.jpg\n")
    with pytest.raises(TestSetError, match=r"set.csv: line 5 has no query image"):
        read_description(path)


def test_a_database_list_that_is_not_utf8_is_named(images, tmp_path):
    import json

    path = tmp_path / "set.json"
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}]}))
    listing = tmp_path / "database.txt"
    listing.write_bytes("a.jpg\ncaf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main([str(path), "--images", str(images), "--name", "x", "--database", str(listing),
                               "--data-root", str(tmp_path / "r")])
    assert str(info.value.code).startswith(f"error: --database {listing} is not UTF-8 text (byte 9: invalid "
                                           "continuation byte)")


@pytest.mark.parametrize("flag", ["description", "--database"])
def test_a_description_or_database_list_larger_than_any_is_refused(images, tmp_path, monkeypatch, flag):
    """A huge file given as either (or /dev/zero) was read whole: out of memory or a hang."""
    import json

    from aml.utils import text_files

    monkeypatch.setattr(text_files, "MAX_TEXT_BYTES", 1 << 10)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": ["a.jpg"] * 200}))
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}]}))
    given = [str(huge), "--database", str(path)] if flag == "description" else [str(path), "--database", str(huge)]
    with pytest.raises(SystemExit) as info:
        make_testset_cli.main(given + ["--images", str(images), "--name", "x", "--data-root", str(tmp_path / "r")])
    what = "the description" if flag == "description" else "--database"
    assert re.fullmatch(rf"error: {what} {huge} is larger than 1024 bytes or has no end \(.*\): give a .*",
                        str(info.value.code))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("database, message", [
    (["a.jpg", "b.jpg", "a.jpg"], "the database lists a.jpg twice; list each image once"),
    (["q.jpg", "a.jpg", "b.jpg"], r"query 0 \(q.jpg\) is in the database too: it would find itself first"),
])
def test_a_database_that_would_count_right_results_wrong_is_refused(images, tmp_path, database, message):
    """A database image listed twice (one copy a positive, the other a negative) or a query in
    the database (first at rank 1, not a positive) lowered mAP silently."""
    with pytest.raises(TestSetError, match=message):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": database}, images, "x",
                       tmp_path / "root")
    assert not (tmp_path / "root" / "test" / "x").exists()


def test_a_query_in_the_database_and_in_its_own_lists_is_kept(images, tmp_path):
    folder = build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"], "junk": ["q.jpg"]}],
                             "database": ["q.jpg", "a.jpg"]}, images, "x", tmp_path)
    assert load_pickle(folder / "gnd_x.pkl")["gnd"][0]["junk"] == [0]


def test_a_csv_row_without_its_query_is_named(images, tmp_path):
    path = tmp_path / "set.csv"
    path.write_text("box,query,easy\n0 0 5 5\n")
    with pytest.raises(TestSetError, match=r"set.csv: line 2 has no query image"):
        read_description(path)


def test_a_column_named_twice_is_refused_rather_than_half_read(tmp_path):
    """Two 'easy' columns: csv kept the last, so the first one's positives were in no list (and
    counted as wrong results) without a word; make_trainset's CSV reads through the same reader."""
    path = tmp_path / "twice.csv"
    path.write_text("query,box,easy,hard,easy,junk\nq.jpg,,a.jpg,b.jpg,c.jpg,\n")
    with pytest.raises(TestSetError, match=r"twice.csv: the header names the column 'easy' twice \(query, box, easy, "
                                           r"hard, easy, junk\); put all its names in one column"):
        read_description(path)


def test_a_query_split_over_two_lines_or_a_json_key_given_twice_is_refused(images, tmp_path):
    """A CSV written one line per (query, positive) made each line a query with one positive,
    the others counted as its wrong results; a JSON key given twice kept the last one alone."""
    path = tmp_path / "split.csv"
    path.write_text("query,box,easy,hard,junk\nq.jpg,,a.jpg,,\nq.jpg,,b.jpg,,\n")
    with pytest.raises(TestSetError, match=r"split.csv: queries 0 and 1 are both q.jpg: each would count the other's "
                                           r"positives as wrong results; list each query once, with all its images"):
        build_test_set(read_description(path), images, "x", tmp_path / "root", source=str(path))
    boxed = {"queries": [{"image": "q.jpg", "box": [0, 0, 9, 9], "easy": ["a.jpg"]},
                         {"image": "q.jpg", "box": [0, 0, 9, 9], "easy": ["b.jpg"]}], "database": None}
    with pytest.raises(TestSetError, match=r"queries 0 and 1 are both q.jpg with the box \[0.0, 0.0, 9.0, 9.0\]"):
        build_test_set(boxed, images, "x", tmp_path / "root")
    boxed["queries"][1]["box"] = [10, 10, 30, 20]  # two objects of one photo: two queries
    folder = build_test_set(boxed, images, "x", tmp_path / "root")
    assert len(load_pickle(folder / "gnd_x.pkl")["qimlist"]) == 2
    path = tmp_path / "twice.json"
    path.write_text('{"queries": [{"image": "q.jpg", "easy": ["a.jpg"], "easy": ["b.jpg"]}]}')
    with pytest.raises(TestSetError, match=r"twice.json: an object names 'easy' twice, and only the last would be "
                                           r"read; give each field once"):
        read_description(path)


def test_a_misspelt_field_or_column_is_refused_rather_than_left_out(images, tmp_path):
    """'bbx' (the gnd's own key) or 'positives' in a JSON query, or a CSV header with spaces after
    its commas: the box and the lists were dropped without a word (the whole image searched, no
    positive counted)."""
    import json

    root = tmp_path / "root"
    for query, field in (({"image": "q.jpg", "bbx": [1, 1, 5, 5], "easy": ["a.jpg"]}, "bbx"),
                         ({"image": "q.jpg", "positives": ["a.jpg"]}, "positives")):
        with pytest.raises(TestSetError, match=rf"query 0 \(q.jpg\): unknown field '{field}'; a query holds image, "
                                               r"box, easy, hard, junk, ok"):
            build_test_set({"queries": [query], "database": None}, images, "mine", root)
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "databse": ["a.jpg"]}))
    with pytest.raises(TestSetError, match="unknown field 'databse'; a description holds queries, database"):
        build_test_set(read_description(path), images, "mine", root)
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("query, box, easy, hard, junk\nq.jpg, 0 0 20 10, a.jpg, b.jpg,\n")
    made = load_pickle(build_test_set(read_description(spaced), images, "spaced", root) / "gnd_spaced.pkl")
    assert made["gnd"][0]["bbx"] == [0, 0, 20, 10] and made["gnd"][0]["easy"] == [0] and made["gnd"][0]["hard"] == [1]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("\ufeffquery,bbox,easy\nq.jpg,0 0 20 10,a.jpg\n", encoding="utf-8")  # Excel's BOM too
    with pytest.raises(TestSetError, match=r"wrong.csv: unknown column 'bbox' \(the header holds query, bbox, easy\)"):
        read_description(wrong)
    shifted = tmp_path / "shifted.csv"  # an unquoted comma: d.jpg would have left the lists unseen
    shifted.write_text("query,box,easy,hard,junk\nq.jpg,,a.jpg,b.jpg,c.jpg,d.jpg\nq.jpg,,a.jpg,b.jpg,c.jpg,\n")
    with pytest.raises(TestSetError, match=r"shifted.csv: line 2 has 6 fields for the header's 5 \(query, box, easy, "
                                           r"hard, junk\); quote a field holding a comma"):
        read_description(shifted)
    shifted.write_text("query,box,easy,hard,junk\nq.jpg,,a.jpg,b.jpg,c.jpg,\n")  # a trailing comma is no field
    assert read_description(shifted)["queries"][0]["junk"] == ["c.jpg"]
    assert not (root / "test" / "mine").exists()


def test_the_default_database_holds_images_only_and_names_are_spelt_one_way(images, tmp_path, caplog):
    """Every file under --images was a database image: a thumbnail folder's copies became
    distractors (a copy of a positive counted as a wrong result) and a Thumbs.db ended the build;
    a query written ./q.jpg was found in the database as q.jpg."""
    from PIL import Image

    (images / ".thumbnails").mkdir()
    Image.new("RGB", (8, 6)).save(images / ".thumbnails" / "a.jpg")
    (images / "Thumbs.db").write_bytes(b"\0\1")
    (images / "queries.csv").write_text("query\n")
    with caplog.at_level("WARNING", logger="aml.data.make_testset"):
        folder = build_test_set({"queries": [{"image": "./q.jpg", "easy": ["sub/../a.jpg"]}], "database": None},
                                images, "mine", tmp_path)
    assert "2 files of" in caplog.text and "are not images by their extension and are left out of the database, " \
        "e.g. Thumbs.db; to keep them, give the database as a list (--database)" in caplog.text
    made = load_pickle(folder / "gnd_mine.pkl")
    assert made["imlist"] == ["a", "b", "c"] and made["qimlist"] == ["q"] and made["gnd"][0]["easy"] == [0]
    with pytest.raises(TestSetError, match=r"\.\./imgs/a.jpg is not inside --images"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["../imgs/a.jpg"]}], "database": ["../imgs/a.jpg"]},
                       images, "out", tmp_path)
    with pytest.raises(TestSetError, match=r"/elsewhere/a.jpg is not inside --images"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["/elsewhere/a.jpg"]}], "database": None},
                       images, "out", tmp_path)
    # an absolute path inside --images (a list made with find "$PWD/imgs") was refused as outside it
    folder = build_test_set({"queries": [{"image": str(images.absolute() / "q.jpg"), "easy": ["a.jpg"]}],
                             "database": [str(images.absolute() / n) for n in ("a.jpg", "b.jpg", "c.png")]},
                            images, "absolute", tmp_path)
    assert load_pickle(folder / "gnd_absolute.pkl")["imlist"] == ["a", "b", "c"]
    alias = tmp_path / "alias"
    alias.symlink_to(images)  # the same folder by another path: its absolute names are inside it too
    folder = build_test_set({"queries": [{"image": str(alias / "q.jpg"), "easy": ["a.jpg"]}], "database": None},
                            images, "aliased", tmp_path)
    assert load_pickle(folder / "gnd_aliased.pkl")["qimlist"] == ["q"]
    Image.new("RGB", (8, 6)).save(images / "A.png")
    with pytest.raises(TestSetError, match=r"A.png and a.jpg share a name once the extension and case are dropped"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": None}, images, "cased",
                       tmp_path)
    (images / "A.png").unlink()
    (images / "sub").mkdir()
    Image.new("RGB", (8, 6)).save(images / "sub" / "b.png")
    Image.new("RGB", (8, 6), "white").save(images / "sub__b.png")
    # the message named the extension and case alone, where it was the folder's '/' written '__'
    with pytest.raises(TestSetError, match=r"sub__b.png and sub/b.png share a name once .* '/' is written '__' "
                                           r"\(their copies in jpg/ would be one file: sub__b.jpg\)"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": ["sub__b.png", "sub/b.png"]},
                       images, "flattened", tmp_path)


@pytest.mark.parametrize("name", ["Roxford5k", "synth-oxford", "SYNTH-OXFORD"])
def test_a_name_that_test_py_reads_as_a_registered_set_is_refused(images, tmp_path, name):
    """test.py looks names up case-insensitively in its registry first: a set made as Roxford5k
    was never the one tested (roxford5k was, downloaded if missing)."""
    with pytest.raises(TestSetError, match=rf"--name {name}: test.py -d {name} means the registered set"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": None}, images, name, tmp_path)
    assert not (tmp_path / "test").exists()


def test_the_distractor_sets_folder_is_not_a_set_name(images, tmp_path):
    """A set made as revisitop1m took the folder of the 1M distractors: -d roxford5k+1m then
    read its jpg/ as the distractors' and skipped their download."""
    with pytest.raises(TestSetError, match=r"--name Revisitop1m: test/revisitop1m is where the distractor set"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": None}, images, "Revisitop1m",
                       tmp_path)


def test_phone_jpegs_are_copied_as_they_are_and_turned_boxes_are_named(images, tmp_path, caplog):
    """A phone's MPO file (a JPEG with a second picture) was re-encoded, so the set scored other
    pixels than the user's; a box on a photo a viewer shows turned was cropped silently in the
    stored grid."""
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    picture.save(images / "a.jpg", "MPO", save_all=True, append_images=[picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert Image.open(images / "a.jpg").format == "MPO"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter
    Image.new("RGB", (40, 30)).save(images / "q.jpg", exif=exif)
    with caplog.at_level("WARNING"):
        folder = build_test_set({"queries": [{"image": "q.jpg", "box": [0, 0, 20, 10], "easy": ["a.jpg"]}],
                                 "database": None}, images, "phone", tmp_path / "root")
    assert (folder / "jpg" / "a.jpg").read_bytes() == (images / "a.jpg").read_bytes()
    assert f"1 boxed query image(s) carry an EXIF orientation (first: {images / 'q.jpg'}): boxes are in the stored" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": None}, images, "plain",
                       tmp_path / "root")
    assert "EXIF" not in caplog.text  # without a box, query and database are both encoded as stored


def test_a_16_bit_image_is_converted_as_a_viewer_shows_it_not_white(images, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((30, 40), 100 * 257, np.uint16)).save(images / "c.png")  # mid-grey, 16 bits
    folder = build_test_set({"queries": [{"image": "q.jpg", "ok": ["a.jpg"]}], "database": None}, images, "scan",
                            tmp_path)
    with Image.open(folder / "jpg" / "c.jpg") as converted:
        assert abs(np.asarray(converted).astype(int) - 100).max() <= 2  # a JPEG's rounding; it was 255


@pytest.mark.parametrize("linked", [False, True], ids=["folder", "link"])
def test_the_default_database_leaves_out_the_sets_of_a_data_root_under_the_images(images, tmp_path, caplog, linked):
    """With --images . and the default ./data, a second set took the first set's copies of the
    queries and positives into its database (medium mAP 73.66 fell to 19.72, without a word)."""
    root = images / "data"
    if linked:  # ./data -> a scratch disk: walked into as a folder, the same
        (tmp_path / "scratch").mkdir()
        root.symlink_to(tmp_path / "scratch")
    first = build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": None}, images, "A", root)
    assert load_pickle(first / "gnd_A.pkl")["imlist"] == ["a", "b", "c"]
    with caplog.at_level("WARNING", logger="aml.data.make_testset"):
        second = build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": None}, images, "B",
                                root)
    assert load_pickle(second / "gnd_B.pkl")["imlist"] == ["a", "b", "c"]
    assert "4 images under" in caplog.text and "belong to the sets of the data root" in caplog.text


@pytest.mark.parametrize("lists, message", [
    ({"easy": ["a.jpg"]}, r"query 0 \(q.jpg\): the database image copy.jpg is the same file \(the same bytes\): the "
                          r"query would find itself first; .* or list it as the query's junk"),
    ({"easy": ["a.jpg", "copy.jpg"]}, r"the database image copy.jpg is the same file"),
    ({"easy": ["a.jpg"], "junk": ["copy.jpg"]}, None),  # the query's own copy, as its junk: kept
])
def test_a_copy_of_the_query_in_the_database_counts_only_as_its_junk(images, tmp_path, lists, message):
    import shutil

    shutil.copyfile(images / "q.jpg", images / "copy.jpg")  # another name, the same bytes
    description = {"queries": [{"image": "q.jpg", **lists}], "database": ["a.jpg", "b.jpg", "copy.jpg"]}
    if message is None:
        assert build_test_set(description, images, "x", tmp_path).is_dir()
        return
    with pytest.raises(TestSetError, match=message):
        build_test_set(description, images, "x", tmp_path)


def test_copies_in_the_database_are_listed_alike_by_every_query(images, tmp_path):
    """Two copies of a positive, one listed and one not: the same image counted right and wrong."""
    (images / "link.jpg").symlink_to(images / "a.jpg")
    database = ["a.jpg", "b.jpg", "link.jpg"]
    with pytest.raises(TestSetError, match=r"query 0 \(q.jpg\): a.jpg \(easy\), link.jpg \(in no list\) are the same "
                                           r"file \(the same bytes\) in different lists: .* list the copies alike"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": database}, images, "x", tmp_path)
    folder = build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg", "link.jpg"]}], "database": database},
                            images, "x", tmp_path)
    assert load_pickle(folder / "gnd_x.pkl")["gnd"][0]["easy"] == [0, 2]


def test_a_query_in_its_own_positives_is_refused_unless_boxed(images, tmp_path):
    """Whole, it found itself first, a right result (mAP 100 for a network that learned nothing);
    a crop finding its whole image is a retrieval (classic Oxford's queries are in their lists)."""
    with pytest.raises(TestSetError, match=r"query 0 \(q.jpg\) lists itself in 'easy' without a box: it would find "
                                           r"itself first and count as a right result; .* list it as the query's junk"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["q.jpg", "a.jpg"]}], "database": ["q.jpg", "a.jpg"]},
                       images, "x", tmp_path)
    shutil.copyfile(images / "q.jpg", images / "copy.jpg")
    boxed = {"image": "q.jpg", "box": [2, 2, 20, 20], "ok": ["q.jpg", "copy.jpg", "a.jpg"]}
    folder = build_test_set({"queries": [boxed], "database": ["q.jpg", "copy.jpg", "a.jpg"]}, images, "x", tmp_path)
    assert load_pickle(folder / "gnd_x.pkl")["gnd"][0]["ok"] == [0, 1, 2]


def test_a_csv_names_with_spaces_a_turned_box_and_a_missing_header_say_the_way_out(images, tmp_path):
    from PIL import Image

    shutil.copyfile(images / "a.jpg", images / "my photo.jpg")
    path = tmp_path / "set.csv"
    path.write_text("query,box,easy\nq.jpg,,my photo.jpg\n")
    with pytest.raises(TestSetError, match=r"lists my in 'easy', but it is not in the database; a name holding a "
                                           r"space needs the JSON form"):
        build_test_set(read_description(path), images, "x", tmp_path / "root", source=str(path))
    with pytest.raises(TestSetError, match=r"lists nope.jpg in 'easy', but it is not in the database$"):
        build_test_set({"queries": [{"image": "q.jpg", "easy": ["nope.jpg"]}], "database": ["my photo.jpg"]}, images,
                       "x", tmp_path / "root", source=str(path))  # another slip: no word of spaces
    turned = Image.new("RGB", (64, 40), (90, 20, 30))
    exif = turned.getexif()
    exif[0x0112] = 6  # shown turned a quarter: 40 x 64
    turned.save(images / "turned.jpg", exif=exif)
    with pytest.raises(TestSetError, match=r"has box \[0, 0, 30, 60\], outside its 64x40 image .* \(its file carries "
                                           r"an EXIF orientation: the box is in the stored pixels, not as shown\)"):
        build_test_set({"queries": [{"image": "turned.jpg", "box": [0, 0, 30, 60], "easy": ["b.jpg"]}],
                        "database": ["b.jpg"]}, images, "x", tmp_path / "root")
    path.write_text("q.jpg,,a.jpg\n")  # no header
    with pytest.raises(TestSetError, match=r"unknown column 'q.jpg' .*, and the first line is the header that names"):
        read_description(path)
