"""The store folder of python -m aml.search: locked and built beside the old store while it is
indexed, every file beside the shards bound to the store by its sha256 in search.json, every
whitening checked, the queries checked before they are searched, the results written whole."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aml.cli import search as search_cli
from aml.evaluation.whitening import WhiteningError
from aml.networks.checkpoint import load_network
from aml.descriptors import ExtractionConfig
from aml.search import SearchDatabase, StoreError, build_ivfpq, list_images, open_database, query_database
from aml.utils.plain_files import save_plain_file

# Indexes stores and starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

COMMON = ["-j", "0", "--device", "cpu", "-q"]
REPOSITORY = Path(__file__).resolve().parents[2]
# A process that indexes as `python -m aml.search` does, but waits inside its first encoding
# (argv: the file it touches then, the file it waits for, the command's flags).
BLOCKED_INDEXING = """
import sys, time
from pathlib import Path
from aml.cli import search
from aml.descriptors import store
blocked, gate = Path(sys.argv[1]), Path(sys.argv[2])
encode = store.describe_images
def describe(*args, **kwargs):
    blocked.touch()
    while not gate.exists():
        time.sleep(0.05)
    return encode(*args, **kwargs)
store.describe_images = describe
search.main(sys.argv[3:])
"""


def flags(teacher, synth_root, *extra):
    return ["--teacher", str(teacher), "-imsize", "64", "--data-root", str(synth_root), *extra] + COMMON


def jpg(synth_root, name):
    return synth_root / "test" / name / "jpg"


@pytest.fixture(scope="module")
def whitened_store(random_teacher, synth_root, tmp_path_factory):
    """A store of synth-paris with its whitening and DBA."""
    folder = tmp_path_factory.mktemp("whitened") / "store"
    search_cli.main(["index", str(jpg(synth_root, "synth-paris")), "--store", str(folder), "--dba", "3"]
                    + flags(random_teacher[0], synth_root, "-w", "synth-sfm"))
    return folder


def test_a_second_indexing_of_a_store_in_use_is_refused_and_the_store_stays_whole(random_teacher, synth_root,
                                                                                     tmp_path):
    """Two indexings into one folder both exited 0 and could leave one's descriptors with the
    other's whitening and dba.npy (top score 0.60 instead of 0.93). Two real processes."""
    teacher, student = random_teacher
    store, photos = tmp_path / "store", tmp_path / "photos"  # the old store: a few other photos
    photos.mkdir()
    for image in sorted(jpg(synth_root, "synth-oxford").glob("*.jpg"))[:6]:
        shutil.copy(image, photos / image.name)
    search_cli.main(["index", str(photos), "--store", str(store)] + flags(teacher, synth_root))
    old = open_database(store).images
    assert len(old) == 6
    blocked, gate = tmp_path / "blocked", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    paris = ["index", str(jpg(synth_root, "synth-paris")), "--store", str(store), "--replace"]
    first = subprocess.Popen([sys.executable, "-c", BLOCKED_INDEXING, str(blocked), str(gate), *paris,
                              *flags(teacher, synth_root, "-w", "synth-sfm")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not blocked.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
            time.sleep(0.1)
        assert open_database(store).images == old  # the old store answers queries while the new one is built
        second = subprocess.run([sys.executable, "-m", "aml.search", *paris, "--dba", "3",
                                 *flags(teacher, synth_root)], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1 and second.stderr.splitlines() == [
            f"error: another run is using {store.resolve()} (pid {first.pid}); wait for it to end, or give another "
            "--store"]
        gate.touch()
        assert first.wait(timeout=300) == 0, first.communicate()[0]
    finally:
        first.kill()
        first.communicate()
    opened = open_database(store)
    images = sorted(str(p.resolve()) for p in jpg(synth_root, "synth-paris").glob("*.jpg"))
    assert opened.images == images and opened.whitening is not None and "dba" not in opened.settings
    hits = query_database(opened, load_network(student), [images[5]], k=2)[0]["results"]  # its own teacher
    assert hits[0]["image"] == images[5] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".store.lock", "blocked", "go", "photos", "store"]


def test_a_folder_of_other_files_is_not_indexed_into(random_teacher, synth_root, tmp_path, monkeypatch):
    """Indexing replaces the whole folder: one holding the user's files is refused before any work."""
    from aml.descriptors import store as descriptor_store

    monkeypatch.setattr(descriptor_store, "describe_images", None)  # nothing may be encoded
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"holds 1 files or folders that are not a store's \(notes.txt, ...\): "
                                         r"indexing replaces the whole folder, so give an empty or new folder"):
        search_cli.main(["index", str(jpg(synth_root, "synth-paris")), "--store", str(tmp_path)]
                        + flags(random_teacher[0], synth_root))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_files_named_as_a_stores_but_of_no_store_are_not_indexed_over(random_teacher, synth_root, tmp_path,
                                                                       monkeypatch):
    """A user's own faiss index and image list (index.faiss, images.txt) carry a store's file
    names: the folder was taken for a store and replaced, without a word."""
    from aml.descriptors import store as descriptor_store

    monkeypatch.setattr(descriptor_store, "describe_images", None)  # nothing may be encoded
    mine = {"index.faiss": b"the user's index", "images.txt": b"a.jpg\n", "search.json": b'{"benchmark": 1}'}
    for name, content in mine.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit, match=r"holds images.txt, index.faiss, search.json, named as a store's files, but "
                                         r"no store's search.json or manifest.json"):
        search_cli.main(["index", str(jpg(synth_root, "synth-paris")), "--store", str(tmp_path)]
                        + flags(random_teacher[0], synth_root))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == mine


def test_a_tests_descriptor_store_is_not_indexed_into(random_teacher, synth_root, tmp_path, monkeypatch):
    """Its files all look like a store's, so it was replaced: hours of +1M encoding lost to a
    slip of the tab key. A search store has a search.json; a test's descriptor store has not."""
    from aml.descriptors import store as descriptor_store

    monkeypatch.setattr(descriptor_store, "describe_images", None)  # nothing may be encoded
    distractors = tmp_path / "revisitop1m.store"
    distractors.mkdir()
    files = {"manifest.json": b"{}", "images.txt": b"a.jpg\n", "shard_00000.npy": b"mine", ".lock": b""}
    for name, content in files.items():
        (distractors / name).write_bytes(content)
    with pytest.raises(SystemExit, match=r"revisitop1m.store holds descriptors but no search.json: it is test.py's "
                                         r"descriptor store .* give another --store"):
        search_cli.main(["index", str(jpg(synth_root, "synth-paris")), "--store", str(distractors)]
                        + flags(random_teacher[0], synth_root))
    assert {p.name: p.read_bytes() for p in distractors.iterdir()} == files


def test_ivfpq_with_too_few_images_is_refused_before_anything_is_encoded(random_teacher, synth_root, tmp_path,
                                                                         monkeypatch):
    from aml.descriptors import store as descriptor_store

    monkeypatch.setattr(descriptor_store, "describe_images", None)  # it failed only after encoding everything
    with pytest.raises(SystemExit, match=r"--ivfpq 4,8 needs at least 256 database images \(8-bit codes\); the "
                                         r"store has 189: search it exactly"):
        search_cli.main(["index", str(jpg(synth_root, "synth-paris")), "--store", str(tmp_path / "store"),
                         "--ivfpq", "4,8"] + flags(random_teacher[0], synth_root))
    assert not (tmp_path / "store").exists()


def test_a_whitening_or_scales_a_store_cannot_take_are_refused_before_anything_is_encoded(random_teacher, synth_root,
                                                                                          tmp_path, monkeypatch):
    """A whitening of another dimension, or of NaNs, was saved as given: the working store was
    replaced by one that open_database refused; no scales was blamed on a damaged manifest."""
    from aml.descriptors import store as descriptor_store
    from aml.search import build_store

    monkeypatch.setattr(descriptor_store, "describe_images", None)
    from aml.networks import load_named_or_file

    teacher = load_named_or_file(str(random_teacher[0]))
    images = list_images(jpg(synth_root, "synth-paris"))
    eye = np.eye(512)
    for whitening, message in [((np.zeros(10), np.eye(10)), r"the whitening given: m of shape \(10,\) and P of shape "
                                                            r"\(10, 10\) do not whiten 512-d"),
                               ((np.zeros(512), eye * np.nan), r"the whitening given holds 262144 NaN or infinite"),
                               (np.eye(512), r"give the teacher's whitening \(m, P\)")]:
        with pytest.raises(StoreError, match=message):
            build_store(teacher, images, tmp_path / "store", 64, whitening=whitening)
    with pytest.raises(StoreError, match=r"scales \[\]: must be a list of scales"):
        build_store(teacher, images, tmp_path / "store", 64, scales=[])
    assert not (tmp_path / "store").exists()


def test_database_photos_stored_turned_are_named_when_indexed(random_teacher, tmp_path, caplog):
    """Queries stored turned were named; database photos were indexed turned without a word."""
    from PIL import Image

    from aml.networks import load_named_or_file
    from aml.search import build_store

    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (48, 32), "red").save(tmp_path / "photos" / "a.jpg")
    Image.new("RGB", (48, 32), "blue").save(tmp_path / "photos" / "b.jpg", exif=exif)
    with caplog.at_level("WARNING", logger="aml.search.store"):
        build_store(load_named_or_file(str(random_teacher[0])), list_images(tmp_path / "photos"), tmp_path / "store",
                    32, config=ExtractionConfig(workers=0, device="cpu"))
    assert "1 of the 2 database images carry an EXIF orientation (first: " in caplog.text
    assert "b.jpg): they are encoded as stored" in caplog.text


def test_at_most_a_thousand_headers_are_read_for_the_orientation(monkeypatch):
    from aml.search import store

    read = []
    monkeypatch.setattr(store, "turned_images", lambda images: read.append(len(images)) or [])
    for count in (999, 1000, 1001, 1999, 250000):
        store._warn_turned([f"{i}.jpg" for i in range(count)])
    assert read == [999, 1000, 501, 1000, 1000]


def test_an_ivfpq_index_is_built_reported_and_searched(random_teacher, synth_root, tmp_path, monkeypatch, capsys):
    """The store's descriptors are read once (to train the index); the recall printed comes from
    search.json, not from opening the whole store again."""
    from PIL import Image

    from aml.search import store as search_store

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(260):  # an 8-bit product quantiser trains on 256 vectors at least
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
    reads = []
    sharded = search_store._sharded_descriptors
    monkeypatch.setattr(search_store, "_sharded_descriptors", lambda path: reads.append(path) or sharded(path))
    search_cli.main(["index", str(folder), "--store", str(tmp_path / "store"), "--ivfpq", "4,8"]
                    + flags(random_teacher[0], synth_root, "-imsize", "32"))
    recall = search_store.search_record(tmp_path / "store")["ivfpq"]["recall"]
    assert len(reads) == 1 and f"recall@10 of held-out database images against exact search {recall:.3f}" in capsys.readouterr().out
    database, stale = open_database(tmp_path / "store"), open_database(tmp_path / "store")
    scores, found = database.search(database.vecs[:, :3], 5)
    assert database.index.ntotal == 260 and found.shape == (3, 5) and 0 < recall <= 1
    # the index is read at the first search: one written since the store was opened is not paired with its descriptors
    build_ivfpq(open_database(tmp_path / "store"), nlist=8, m=8)
    with pytest.raises(StoreError, match=r"index.faiss is not the index the store had when it was opened \(the "
                                         r"folder was indexed again meanwhile\): open the store again"):
        stale.search(stale.vecs[:, :3], 5)
    # nor is an index of a database opened before the folder was indexed again written into the new store
    index_bytes = (tmp_path / "store" / "index.faiss").read_bytes()
    manifest = tmp_path / "store" / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # another indexing's manifest
    with pytest.raises(StoreError, match=r"was indexed again since it was opened: its index would be of the old "
                                         r"descriptors; open the store again"):
        build_ivfpq(stale, nlist=4, m=8)
    assert (tmp_path / "store" / "index.faiss").read_bytes() == index_bytes


def test_a_store_this_user_may_not_read_is_not_called_damaged(whitened_store, lock):
    """Another user's search.json was 'damaged; index it again': hours of a colleague's 1M store."""
    from aml.utils.errors import NoAccess

    lock(whitened_store / "search.json")
    with pytest.raises(NoAccess, match=r"search.json cannot be read \(Permission denied\): it is another user's"):
        open_database(whitened_store)


def test_search_json_binds_the_files_beside_the_shards(whitened_store):
    record = json.loads((whitened_store / "search.json").read_text())
    assert sorted(record["files"]) == ["dba.npy", "whitening.pth"] and record["dba"] == {"k": 3, "alpha": 3.0}
    assert open_database(whitened_store).settings["dba"] == {"k": 3, "alpha": 3.0}


def _other_whitening(folder: Path):
    """A whitening of the same dimension from another store: the same P, another mean."""
    data = {"m": np.full((512, 1), 0.01), "P": np.eye(512)}
    save_plain_file(data, folder / "whitening.pth")


def _nan_whitening(folder: Path):
    P = np.eye(512)
    P[3, 7] = np.nan
    save_plain_file({"m": np.zeros((512, 1)), "P": P}, folder / "whitening.pth")


def _unrecorded(folder: Path):
    """search.json as an aml that recorded no hashes wrote it."""
    record = json.loads((folder / "search.json").read_text())
    record.pop("files")
    (folder / "search.json").write_text(json.dumps(record))


REPLACED = {
    "whitening": (_other_whitening, r"whitening.pth is not the file this store's indexing wrote \(its sha256 differs "
                                    r"from the one in search.json\): it was replaced or copied from another store"),
    "dba": (lambda f: np.save(f / "dba.npy", np.roll(np.load(f / "dba.npy"), 1, axis=1)),
            r"dba.npy is not the file this store's indexing wrote"),
    "missing whitening": (lambda f: (f / "whitening.pth").unlink(), r"whitening.pth is missing, which search.json"),
    "nan whitening": (_nan_whitening, r"whitening.pth is not the file this store's indexing wrote"),
    "nan whitening, unrecorded": (lambda f: (_unrecorded(f), _nan_whitening(f)),
                                  r"whitening.pth holds 1 NaN or infinite values \(in float32\): it is damaged; index the store "
                                  r"again \(python -m aml.search index -w SET\)"),
}


@pytest.mark.parametrize("case", list(REPLACED))
def test_a_file_replaced_in_a_store_is_named_on_both_query_paths(whitened_store, random_teacher, synth_root, tmp_path,
                                                                  case):
    """A NaN in whitening.pth gave rc 0 and an empty result list, and another store's whitening
    or DBA of the same shape was searched silently."""
    copy = tmp_path / "store"
    shutil.copytree(whitened_store, copy)
    edit, message = REPLACED[case]
    edit(copy)
    query = str(sorted(jpg(synth_root, "synth-paris").glob("*query*.jpg"))[0])
    # the store is checked before a query is encoded, by the checkpoint or by an exported student
    for student in (["--network", str(random_teacher[1])], ["--onnx", str(tmp_path / "student.onnx")]):
        with pytest.raises(SystemExit, match=f"^error: .*{message}"):
            search_cli.main(["query", query, "--store", str(copy), *student, "--data-root", str(synth_root)] + COMMON)


def test_an_unrecorded_whitening_is_read_with_a_warning(whitened_store, tmp_path, caplog):
    copy = tmp_path / "store"
    shutil.copytree(whitened_store, copy)
    _unrecorded(copy)
    _other_whitening(copy)
    open_database(copy)
    assert "indexed before aml recorded the sha256 of its files, so a whitening.pth or dba.npy replaced" in caplog.text


def test_queries_are_checked_before_and_after_whitening(tmp_path):
    vecs = np.eye(3, dtype=np.float32)
    database = SearchDatabase(tmp_path, vecs, ["a", "b", "c"], {"dim": 3})
    with pytest.raises(StoreError, match=r"1 of the 2 query descriptors hold NaN or infinite values"):
        database.search(np.array([[1.0, np.nan], [0, 0], [0, 0]]), k=2)
    with pytest.raises(StoreError, match=r"the queries are descriptors of shape \(4, 1\), but the store .* takes 3 x Q"):
        database.search(np.ones((4, 1)), k=2)
    huge = SearchDatabase(tmp_path, vecs, ["a", "b", "c"], {"dim": 3}, (np.zeros((3, 1)), np.full((3, 3), 1e300)))
    with np.errstate(all="ignore"), pytest.raises(WhiteningError, match=r"whitening made 1 of the 1 query "
                                                                           r"descriptors NaN or infinite"):
        huge.search(np.full((3, 1), 1e30), k=2)


def test_results_are_written_whole_on_a_full_disk(whitened_store, random_teacher, synth_root, small_disk):
    """query --json was written with Path.write_text: a full disk left cut JSON in place of the old results."""
    from tests.conftest import fill_disk

    disk = small_disk(1)
    out = disk / "hits.json"
    out.write_text('["the results of yesterday"]')
    query = ["query", str(sorted(jpg(synth_root, "synth-paris").glob("*query*.jpg"))[0]), "--store",
             str(whitened_store), "--network", str(random_teacher[1]), "-k", "100", "--json", str(out),
             "--data-root", str(synth_root)] + COMMON
    fill_disk(disk, 2048)
    with pytest.raises(SystemExit, match=f"no space left on the device for {out}"):
        search_cli.main(query)
    assert out.read_text() == '["the results of yesterday"]' and sorted(p.name for p in disk.iterdir()) == [
        "filler", "hits.json"]


def test_image_names_that_are_not_utf8_are_indexed_and_found(random_teacher, synth_root, tmp_path):
    """Indexing a folder with such a name was a UnicodeEncodeError."""
    photos = tmp_path / "photos"
    photos.mkdir()
    source = sorted(jpg(synth_root, "synth-paris").glob("*.jpg"))
    for path in source[:5]:
        shutil.copy(path, photos)
    odd = os.fsdecode(bytes(photos) + b"/caf\xe9.jpg")
    shutil.copy(source[7], odd)
    out = tmp_path / "hits.json"
    search_cli.main(["index", str(photos), "--store", str(tmp_path / "store")] + flags(random_teacher[0], synth_root))
    search_cli.main(["query", odd, "--store", str(tmp_path / "store"), "--network", str(random_teacher[1]), "-k", "1",
                     "--json", str(out), "--data-root", str(synth_root)] + COMMON)
    assert json.loads(out.read_text())[0]["results"][0]["image"] == odd


@pytest.mark.parametrize("name, content, what", [("photo.jpg", b"\xff\xd8\xff\xe0\0\x10JFIF", "is an image, not a list"),
                                                 ("photos.tar", b"a.jpg\0\0\0", r"is not text \(it holds NUL")])
def test_an_image_or_a_binary_file_given_as_the_list_is_named(tmp_path, name, content, what):
    """search index photo.jpg ended in 'ValueError: embedded null byte'."""
    from aml.search import list_images

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(StoreError, match=rf"the image list .*{name} {what}.*: give a folder of images"):
        list_images(path)


def test_an_image_list_is_read_from_a_pipe_and_no_further_than_a_list(tmp_path, monkeypatch):
    from aml.search import list_images
    from aml.utils import text_files

    fifo = tmp_path / "list"
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'w').write('a.jpg\\nb.jpg\\n')"])
    assert list_images(fifo) == ["a.jpg", "b.jpg"]
    writer.wait()
    monkeypatch.setattr(text_files, "MAX_TEXT_BYTES", 1 << 16)
    with pytest.raises(StoreError, match=r"the image list /dev/zero is larger than 65536 bytes or has no end"):
        list_images("/dev/zero")


@pytest.mark.parametrize("name", ["../../elsewhere/whitening.pth", "/dev/zero", "notes.txt"])
def test_search_json_names_only_the_stores_own_files(whitened_store, tmp_path, name):
    """Any name there was hashed, outside the store too (/dev/zero: read without end)."""
    store = shutil.copytree(whitened_store, tmp_path / "copy.store")
    record = json.loads((store / "search.json").read_text())
    record["files"][name] = "0" * 64
    (store / "search.json").write_text(json.dumps(record))
    with pytest.raises(StoreError, match=r"search.json: files: must map the store's whitening.pth, dba.npy or "
                                         r"index.faiss to sha256 digests"):
        open_database(store)


def test_images_that_could_not_be_read_are_not_searched(random_teacher, tmp_path):
    """build_store with skip_bad kept their zero columns, which the whitening turns into one
    unit vector (-Pm/|Pm|): an unreadable image ranked as a real answer."""
    from PIL import Image

    from aml.networks.loading import NetworkSpec, load_spec
    from aml.search import build_store

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    (folder / "3.jpg").write_bytes(b"not a jpeg")
    images = sorted(str(p) for p in folder.glob("*.jpg"))
    teacher = load_spec(NetworkSpec.parse(str(random_teacher[0])), None, None)
    m = 0.01 * rng.normal(size=(512, 1))  # an unreadable image's zeros, whitened: exactly -m/|m|
    build_store(teacher, images, tmp_path / "store", 32, whitening=(m, np.eye(512)),
                config=ExtractionConfig(skip_bad=True, workers=0, device="cpu"))
    database = open_database(tmp_path / "store")
    assert database.images == [os.path.abspath(p) for p in images if not p.endswith("3.jpg")]
    assert database.vecs.shape == (512, 5) and database.searchable == 5
    scores, _ = database.search(-m / np.linalg.norm(m), 1)
    assert scores[0, 0] < 0.9  # no answer is that vector (it scored 1.0, first)
    build_store(teacher, images[3:4], tmp_path / "unreadable", 32, config=ExtractionConfig(skip_bad=True, workers=0,
                                                                                           device="cpu"))
    with pytest.raises(StoreError, match=r"none of the 1 images of the store .*unreadable could be read"):
        open_database(tmp_path / "unreadable")


def test_a_store_names_linked_images_by_their_own_path(random_teacher, tmp_path):
    """git-annex and DVC keep photos as links into an object folder: the store printed the
    objects' names instead of the photos'."""
    from PIL import Image

    from aml.networks.loading import NetworkSpec, load_spec
    from aml.search import build_store

    objects, photos = tmp_path / "objects", tmp_path / "photos"
    objects.mkdir()
    photos.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(objects / f"SHA256-{i}", format="JPEG")
        (photos / f"photo{i}.jpg").symlink_to(objects / f"SHA256-{i}")
    teacher = load_spec(NetworkSpec.parse(str(random_teacher[0])), None, None)
    build_store(teacher, list_images(photos), tmp_path / "store", 32, config=ExtractionConfig(workers=0, device="cpu"))
    assert open_database(tmp_path / "store").images == [str(photos / f"photo{i}.jpg") for i in range(3)]


def test_a_store_indexed_again_while_it_is_opened_is_refused(whitened_store, tmp_path, monkeypatch):
    """Its parts were read one after another from the folder's path: an indexing that swapped in
    its new folder meanwhile paired the old shards with the new whitening, DBA and index, each
    of them passing its sha256 check against the new search.json."""
    from aml.search import store as search_store
    from aml.utils.atomic import publish_folder

    folder = tmp_path / "store"
    shutil.copytree(whitened_store, folder)
    shutil.copytree(whitened_store, tmp_path / ".store.new")
    read = search_store._sharded_descriptors

    def while_indexed(path):
        found = read(path)
        publish_folder(tmp_path / ".store.new", folder, overwrite=True)  # the other indexing ends
        return found

    monkeypatch.setattr(search_store, "_sharded_descriptors", while_indexed)
    with pytest.raises(StoreError, match=r"store .* was indexed again while it was being opened .*: open it again"):
        open_database(folder)
    monkeypatch.setattr(search_store, "_sharded_descriptors", read)
    assert open_database(folder).vecs.shape == open_database(whitened_store).vecs.shape  # opened again: whole


def test_a_file_named_as_a_stores_is_a_store_only_by_its_content(tmp_path):
    """benchmarks/results holds the +1M benchmark's search.json: the folder read as a search
    store's, so that any --json into it (the demo's documented command) was refused."""
    import json

    from aml.cli.arguments import output_file_of
    from aml.search.store import store_marker

    (tmp_path / "search.json").write_text(json.dumps({"benchmark": "search", "results": {}}))
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "a web app's"}))
    assert store_marker(tmp_path) is None
    assert output_file_of("JSON")(str(tmp_path / "demo.json")) == str(tmp_path / "demo.json")
    (tmp_path / "manifest.json").write_text(json.dumps({"shard_size": 16384, "count": 3}))
    assert store_marker(tmp_path) == "manifest.json"
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "search.json").write_bytes(b'{"source": "te\x00\x00')  # a store's, damaged by a crash
    assert store_marker(tmp_path) == "search.json"


def test_a_json_given_as_the_image_list_is_named(tmp_path):
    """search index x.json read the JSON's lines as images: 'image .../[ is missing'."""
    from aml.search import list_images
    from aml.search.store import StoreError

    (tmp_path / "x.json").write_text('[\n "a.jpg"\n]\n')
    with pytest.raises(StoreError, match=r"the image list .*x.json is a JSON file, not a list of paths"):
        list_images(tmp_path / "x.json")
    (tmp_path / "list.txt").write_text("a.jpg\n b.jpg \n\n")
    assert list_images(tmp_path / "list.txt") == ["a.jpg", "b.jpg"]


def test_an_image_listed_twice_is_indexed_once(random_teacher, tmp_path, monkeypatch, caplog):
    """A list naming one photo twice (or as absolute and relative paths) indexed each copy: its
    top k was one photo k times, and the count printed counted the copies."""
    from aml.networks.loading import load_teacher
    from aml.search import list_images
    from aml.search.store import StoreError, build_store

    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text(f"a.jpg\nb.jpg\n{tmp_path / 'a.jpg'}\nb.jpg\n")
    with caplog.at_level("WARNING", logger="aml.search.store"):
        assert list_images(tmp_path / "list.txt") == ["a.jpg", "b.jpg"]
    assert "names 2 of its 2 images more than once (2 lines more" in caplog.text
    caplog.clear()
    (tmp_path / "three.txt").write_text("a.jpg\na.jpg\na.jpg\nb.jpg\n")
    with caplog.at_level("WARNING", logger="aml.search.store"):
        assert list_images(tmp_path / "three.txt") == ["a.jpg", "b.jpg"]
    assert "names 1 of its 2 images more than once (2 lines more" in caplog.text
    with pytest.raises(StoreError, match=r"a.jpg is given twice among the images to index; give each image once"):
        build_store(load_teacher(str(random_teacher[0])), ["a.jpg", str(tmp_path / "a.jpg")], tmp_path / "store", 64)
