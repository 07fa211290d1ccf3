"""The sharded descriptor store: layout, atomic shards, restart at the first missing shard,
refusal of a manifest of another network or image list, skipped images, and the checks of
what is read: every manifest field, its digest, each shard's sha256."""

import json
import os
import shutil

import numpy as np
import pytest

from aml.descriptors.key import DescriptorKey
from aml.descriptors.store import DescriptorStore, StoreDamaged, StoreKey, StoreMismatch, descriptors_sha256, open_store
from aml.utils.atomic import InTheWay
from aml.utils.errors import DataError

IMAGES = [f"img{i:03d}.jpg" for i in range(10)]
KEY = StoreKey(DescriptorKey("f" * 16, 64), "net", "float32", 4)


def descriptors(images):
    """Deterministic D=3 descriptors per image name (D x n)."""
    names = [os.path.basename(i) for i in images]
    return np.array([[len(i), int(i[3:6]), 1.0] for i in names], dtype=np.float32).T


class Encoder:
    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, images, skipped):
        if self.fail_at is not None and self.fail_at in images:
            raise KeyboardInterrupt  # the run is interrupted while encoding this shard
        self.calls.append(list(images))
        return descriptors(images)


def test_a_store_is_loaded_into_one_array_a_shard_at_a_time(tmp_path):
    """load() held the shards, their concatenation and its float32 copy: three times a store
    of a million descriptors (a search store is loaded whole to be searched)."""
    import tracemalloc

    images = [f"img{i:03d}.jpg" for i in range(400)]
    store = DescriptorStore.create(tmp_path / "s", images, StoreKey(DescriptorKey("f" * 16, 64), "net", "float16", 20), 256)
    rng = np.random.default_rng(0)
    expected = rng.normal(size=(256, 400)).astype(np.float16)
    for k in range(store.shards):
        store.write_shard(k, expected[:, store.shard_rows(k)])
    store.load()  # the first read imports what hashes and checks the shards
    store = open_store(tmp_path / "s")  # whose checks are made again
    tracemalloc.start()
    vecs = store.load()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert vecs.dtype == np.float32 and np.array_equal(vecs, expected.astype(np.float32))
    assert peak < 1.3 * vecs.nbytes  # measured: 1.55 before (float16 shards; 3 of float32 ones)


def test_shards_hold_fixed_size_blocks_in_order(tmp_path):
    store = DescriptorStore.create(tmp_path / "s", IMAGES, KEY, 3)
    assert store.fill(Encoder()) == 3 and store.complete()
    assert [np.load(store.shard_path(k)).shape for k in range(3)] == [(4, 3), (4, 3), (2, 3)]
    np.testing.assert_array_equal(store.load(), descriptors(IMAGES))
    assert [start for start, _ in store.blocks()] == [0, 4, 8]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["count"] == 10 and manifest["fingerprint"] == "f" * 16 and manifest["dim"] == 3
    assert (tmp_path / "s" / "images.txt").read_text().split() == IMAGES
    np.load(store.shard_path(0), mmap_mode="r")  # memory-mappable


def test_an_interrupted_extraction_restarts_at_the_first_missing_shard(tmp_path):
    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    with pytest.raises(KeyboardInterrupt):
        store.fill(Encoder(fail_at=IMAGES[5]))
    assert store.missing() == [1, 2] and not list(tmp_path.glob(".*.tmp"))
    again = Encoder()
    assert DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(again) == 2
    assert again.calls == [IMAGES[4:8], IMAGES[8:]]
    np.testing.assert_array_equal(store.load(), descriptors(IMAGES))
    assert DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(Encoder()) == 0  # complete: nothing encoded again


def test_what_a_killed_write_leaves_is_never_read_as_a_shard(tmp_path):
    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    store.write_shard(0, descriptors(IMAGES[:4]))
    (tmp_path / ".shard_00001.npy.x1y2.tmp").write_bytes(b"\x93NUMPY half a shard")  # as a kill mid-write leaves
    assert store.missing() == [1, 2]
    with pytest.raises(FileNotFoundError, match="shard_00001.npy is missing"):
        store.load()
    DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(Encoder())
    np.testing.assert_array_equal(store.load(), descriptors(IMAGES))


@pytest.mark.parametrize("change, named", [
    (dict(key=StoreKey(DescriptorKey("e" * 16, 64), "net", "float32", 4)), "fingerprint"),
    (dict(key=StoreKey(DescriptorKey("f" * 16, 96), "net", "float32", 4)), "image_size"),
    (dict(key=StoreKey(DescriptorKey("f" * 16, 64), "net", "float16", 4)), "dtype"),
    (dict(images=IMAGES[::-1]), "images_sha1"),
])
def test_a_store_of_other_descriptors_is_refused_and_kept(tmp_path, change, named):
    DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(Encoder())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    arguments = {"images": IMAGES, "key": KEY, **change}
    with pytest.raises(StoreMismatch, match=f"{tmp_path}.*{named}.*choose another folder"):
        DescriptorStore.create(tmp_path, arguments["images"], arguments["key"], 3)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_shards_without_a_manifest_are_refused(tmp_path):
    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    store.fill(Encoder())
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(StoreMismatch, match="shard_00000.npy.*no manifest.json"):
        DescriptorStore.create(tmp_path, IMAGES, KEY, 3)


def test_a_damaged_shard_is_named(tmp_path):
    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    store.fill(Encoder())
    np.save(store.shard_path(1), np.zeros((4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shard_00001\.npy holds \(4, 5\) float32, the manifest says 4 x 3"):
        store.load()
    store.shard_path(2).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"shard_00002\.npy is not a readable"):
        store.read_shard(2)
    store.shard_path(0).unlink()
    with pytest.raises(FileNotFoundError, match="shard_00000.npy is missing"):
        store.read_shard(0)


def test_a_store_this_user_may_not_read_is_not_called_damaged(tmp_path, lock):
    """Another user's shard or manifest (a shared data root) was 'damaged: delete it', which
    would delete a colleague's store of hours."""
    from aml.utils.errors import NoAccess

    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    store.fill(Encoder())
    lock(store.shard_path(1))
    with pytest.raises(NoAccess, match=r"shard_00001.npy cannot be read \(Permission denied\): it is another user's or "
                                       r"locked, not damaged; ask its owner for read access"):
        store.read_shard(1)
    lock(tmp_path / "images.txt")  # was "not a readable descriptor store", to be deleted
    with pytest.raises(NoAccess, match=r"images.txt cannot be read \(Permission denied\): it is another user's"):
        open_store(tmp_path)
    lock(tmp_path / "manifest.json")
    with pytest.raises(NoAccess, match=r"manifest.json cannot be read \(Permission denied\)"):
        open_store(tmp_path)


def test_the_missing_shards_are_dealt_evenly_over_the_processes(tmp_path, monkeypatch):
    """Shards went to the rank of k mod N: a store whose odd shards an earlier run encoded left
    every missing one to rank 0 of 2, the other waiting at the barrier (30 minutes, NCCL's timeout)."""
    import aml.descriptors.store as store_module
    from aml.utils.distributed import World

    store = DescriptorStore.create(tmp_path, IMAGES, StoreKey(DescriptorKey("f" * 16, 64), "net", "float32", 1), 3)
    store.fill(Encoder())
    for k in (0, 2, 4, 6, 8):
        store.shard_path(k).unlink()
    monkeypatch.setattr(store_module, "current_world", lambda: World(rank=1, size=2))
    monkeypatch.setattr(store_module, "barrier", lambda world: None)
    monkeypatch.setattr(store_module, "from_main", lambda value, world: value)  # rank 0's list, the same here
    encoder = Encoder()
    store.fill(encoder)
    assert encoder.calls == [[IMAGES[2]], [IMAGES[6]]]  # the second and fourth of the five missing


def test_float16_halves_the_shards_and_rounds_like_numpy(tmp_path):
    key = StoreKey(DescriptorKey("f" * 16, 64), "net", "float16", 4)
    store = DescriptorStore.create(tmp_path, IMAGES, key, 3)
    store.fill(Encoder())
    assert np.load(store.shard_path(0)).dtype == np.float16
    np.testing.assert_array_equal(store.load(), descriptors(IMAGES).astype(np.float16).astype(np.float32))


def test_skipped_images_are_listed_next_to_the_shards(tmp_path):
    def encode(images, skipped):
        if IMAGES[6] in images:
            skipped.append(images.index(IMAGES[6]))
        return descriptors(images)

    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    store.fill(encode, skip_bad=True)
    assert store.skipped() == [6]
    assert (tmp_path / "skipped.txt").read_text().split() == [IMAGES[6]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="dtype 'int8'"):
        DescriptorStore("x", IMAGES, StoreKey(DescriptorKey("f", 64), "n", "int8", 4), 3)
    with pytest.raises(ValueError, match="shard size must be positive"):
        DescriptorStore("x", IMAGES, StoreKey(DescriptorKey("f", 64), "n", "float32", 0), 3)


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _old_manifest(folder, **changes):
    """The manifest as aml wrote it before it recorded hashes (no digest, no shard hashes), with ``changes``."""
    manifest = {k: v for k, v in _manifest(folder).items() if k not in ("digest", "shard_sha256")}
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, **changes)))


def test_the_manifest_records_each_shards_sha256_and_its_own_digest(tmp_path):
    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    assert _manifest(tmp_path)["shard_sha256"] == [None] * 3  # recorded when the shards are written
    store.fill(Encoder())
    recorded = _manifest(tmp_path)["shard_sha256"]
    assert recorded == [descriptors_sha256(np.load(store.shard_path(k))) for k in range(3)]
    assert open_store(tmp_path).unverified() == []
    manifest = _manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(dict(manifest, scales=[1.0, 0.5])))  # other scales
    with pytest.raises(StoreDamaged, match=r"manifest.json was edited after aml wrote it .*; delete the store"):
        open_store(tmp_path)


def test_a_shard_copied_from_another_store_with_the_same_settings_is_refused(tmp_path):
    """It was searched silently: an image ranked itself second (0.876) instead of first (1.0)."""
    ours = DescriptorStore.create(tmp_path / "ours", IMAGES, KEY, 3)
    ours.fill(Encoder())
    theirs = DescriptorStore.create(tmp_path / "theirs", [f"oth{i:03d}.jpg" for i in range(10, 20)], KEY, 3)
    theirs.fill(Encoder())
    for suffix in (".npy", ".json"):
        shutil.copyfile(theirs.shard_path(1).with_suffix(suffix), ours.shard_path(1).with_suffix(suffix))
    opened = open_store(tmp_path / "ours")
    np.testing.assert_array_equal(opened.read_shard(0), descriptors(IMAGES[:4]).T)
    with pytest.raises(StoreDamaged, match=r"ours: shard_00001.npy is not the shard this store wrote .* copied from "
                                           r"another store; delete it and run the same command again"):
        opened.load()
    ours.shard_path(1).unlink()
    DescriptorStore.create(tmp_path / "ours", IMAGES, KEY, 3).fill(Encoder())  # the fix the message gives
    np.testing.assert_array_equal(open_store(tmp_path / "ours").load(), descriptors(IMAGES))


def test_a_store_hashes_each_shard_file_once_and_again_when_it_is_replaced(tmp_path, monkeypatch):
    """A +1M test passes over the distractor shards about ten times: each shard file is
    hashed at its first read only, and a file put in its place is checked again."""
    from aml.descriptors import store as store_module

    DescriptorStore.create(tmp_path / "ours", IMAGES, KEY, 3).fill(Encoder())
    theirs = DescriptorStore.create(tmp_path / "theirs", [f"oth{i:03d}.jpg" for i in range(10, 20)], KEY, 3)
    theirs.fill(Encoder())
    hashed = []
    monkeypatch.setattr(store_module, "descriptors_sha256", lambda array: hashed.append(1) or descriptors_sha256(array))
    opened = open_store(tmp_path / "ours")
    for _ in range(3):
        np.testing.assert_array_equal(opened.load(), descriptors(IMAGES))
    assert len(hashed) == 3  # one per shard
    shutil.copyfile(theirs.shard_path(1), opened.shard_path(1))
    with pytest.raises(StoreDamaged, match="shard_00001.npy is not the shard this store wrote"):
        opened.load()


def test_shard_hashes_are_recorded_under_the_stores_lock(tmp_path):
    """Two runs filling one distractor store each read the manifest, add their hashes and write
    it: without a lock the last writer drops the other's."""
    import threading

    from aml.utils.atomic import folder_lock

    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    for k in range(store.shards):
        store.write_shard(k, descriptors(IMAGES[k * 4 : k * 4 + 4]))
    with folder_lock(tmp_path):  # another process updating the manifest
        recording = threading.Thread(target=store.record_hashes)
        recording.start()
        recording.join(0.3)
        assert recording.is_alive() and _manifest(tmp_path)["shard_sha256"] == [None] * 3  # it waits
    recording.join(10)
    assert not recording.is_alive() and open_store(tmp_path).unverified() == []


def test_a_store_written_before_hashes_is_read_unverified_with_a_warning(tmp_path, caplog):
    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    store.fill(Encoder())
    _old_manifest(tmp_path)
    opened = open_store(tmp_path)
    assert "3 of 3 shards have no sha256 in its manifest" in caplog.text and opened.unverified() == [0, 1, 2]
    np.testing.assert_array_equal(opened.load(), descriptors(IMAGES))
    store.shard_path(2).unlink()  # an extraction of that aml, resumed by this one: its shards are not vouched for
    DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(Encoder())
    assert "shard_sha256" not in _manifest(tmp_path) and open_store(tmp_path).unverified() == [0, 1, 2]


def test_a_file_where_the_store_goes_is_named_before_anything_is_encoded(tmp_path):
    (tmp_path / "x.store").write_text("mine")
    with pytest.raises(InTheWay, match=r"x.store is a file where aml makes a folder: move it away$"):
        DescriptorStore.create(tmp_path / "x.store", IMAGES, KEY, 3)
    assert (tmp_path / "x.store").read_text() == "mine"


def test_a_manifest_whose_digest_was_deleted_is_refused(tmp_path):
    """aml writes the digest with the shards' hashes: without it, a hand edit (another image
    size) went unseen, and queries were encoded at one size against a database of another."""
    DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(Encoder())
    manifest = _manifest(tmp_path)
    del manifest["digest"]
    (tmp_path / "manifest.json").write_text(json.dumps(dict(manifest, image_size=KEY.descriptors.image_size * 2)))
    with pytest.raises(StoreDamaged, match=r"manifest.json was edited after aml wrote it \(its digest is gone\)"):
        open_store(tmp_path)


@pytest.mark.parametrize("changes, message", [
    (dict(dim="x"), r"dim: must be a descriptor dimension \(1 to 65536\), got 'x'"),
    (dict(dim=10**6), r"dim: must be a descriptor dimension \(1 to 65536\), got 1000000"),
    (dict(count="10"), r"count: must be an integer >= 0, got '10'"),
    (dict(shard_size=0), r"shard_size: must be a positive integer, got 0"),
    (dict(dtype="int8"), r"dtype: must be one of float16, float32, got 'int8'"),
    (dict(dtype=["float32"]), r"dtype: must be one of float16, float32, got \['float32'\]"),  # was a TypeError
    (dict(network=5), r"network: must be a string, got 5"),
    (dict(version=2), r"version: must be 1, got 2"),
    (dict(images_sha1=None), r"images_sha1: must be a string"),
    (dict(image_size="big"), r"image_size: must be a positive integer, got 'big'"),
    (dict(scales=2), r"scales: must be a list of scales, got 2"),
    (dict(shard_sha256=["0" * 64]), r"shard_sha256: must be a list of 3 sha256 digests"),
    (dict(shard_sha256=[None, None, "x"]), r"shard_sha256: must hold sha256 digests, got 'x'"),
])
def test_every_manifest_field_is_checked_when_read(tmp_path, changes, message):
    """Edited fields were tracebacks (TypeError, RuntimeError inside the resize) or silent searches."""
    DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(Encoder())
    _old_manifest(tmp_path, **changes)
    with pytest.raises(StoreDamaged, match=f"{tmp_path}/manifest.json: {message}"):
        open_store(tmp_path)
    with pytest.raises(DataError, match="manifest.json"):
        DescriptorStore.create(tmp_path, IMAGES, KEY, 3)  # the writer's side reads it the same way


@pytest.mark.parametrize("edit, message", [
    (lambda folder: (folder / "manifest.json").write_text("[1, 2]"), r"manifest.json holds a list, not a store's"),
    (lambda folder: (folder / "manifest.json").write_text("{cut"), r"cannot read .*manifest.json .*: it is damaged"),
    (lambda folder: (folder / "shard_00003.npy").write_bytes(b""), r"says 3 shards of 4 images, but the folder also "
                                                                    r"holds shard_00003.npy"),
    (lambda folder: (folder / "shard_00001.json").write_text('{"skipped": [0]}'),
     r"shard_00001.json does not list skipped images of its shard \(indices in \[4, 8\)\)"),
])
def test_files_of_a_store_that_do_not_agree_are_named(tmp_path, edit, message):
    DescriptorStore.create(tmp_path, IMAGES, KEY, 3).fill(Encoder())
    edit(tmp_path)
    with pytest.raises(StoreDamaged, match=message):
        open_store(tmp_path).skipped()


def test_a_shard_written_twice_keeps_the_first_and_its_hash(tmp_path):
    """Two processes encoding one shard (two test.py runs sharing distractors) never leave one
    process's hash next to the other's descriptors."""
    store = DescriptorStore.create(tmp_path, IMAGES, KEY, 3)
    store.write_shard(0, descriptors(IMAGES[:4]))
    store.write_shard(0, descriptors(IMAGES[:4]) + 1)
    store.fill(Encoder())
    np.testing.assert_array_equal(open_store(tmp_path).load(), descriptors(IMAGES))


def test_image_names_that_are_not_utf8_are_kept(tmp_path):
    images = IMAGES[:-1] + [b"img009\xff.jpg".decode(errors="surrogateescape")]  # as os.listdir gives such a name
    DescriptorStore.create(tmp_path, images, KEY, 3).fill(Encoder())
    assert open_store(tmp_path).images == images


def test_a_shard_of_as_many_images_as_dimensions_is_not_stored_transposed(tmp_path):
    """write_shard took D x n or n x D by shape: a shard of exactly D images (512 photos for a
    512-d teacher, --shard-size 2048 with a 2048-d network) was stored transposed, silently."""
    key = StoreKey(KEY.descriptors, KEY.network, "float32", 3)
    images = IMAGES[:6]
    store = DescriptorStore.create(tmp_path, images, key, 3)
    columns = np.arange(18, dtype=np.float32).reshape(3, 6)  # image i's descriptor: column i
    assert store.fill(lambda block, skipped: columns[:, [images.index(i) for i in block]]) == 2
    np.testing.assert_array_equal(store.load(), columns)
    with pytest.raises(ValueError, match=r"needs 3 x 3 descriptors \(a column per image\), got \(3, 4\)"):
        store.write_shard(0, np.zeros((3, 4)))


def _photos(folder, n=10):
    folder.mkdir()
    for i in range(n):
        (folder / f"img{i:03d}.jpg").write_bytes(b"x" * (100 + i))
    return [str(folder / f"img{i:03d}.jpg") for i in range(n)]


class Shifted(Encoder):
    """Other descriptors than `Encoder`'s: an image encoded again after it changed."""

    def __call__(self, images, skipped):
        return super().__call__(images, skipped) + 1


@pytest.mark.parametrize("edit", ["rewritten", "touched", "removed"])
def test_images_changed_since_their_shard_was_encoded_are_named_and_only_those_shards_encoded_again(tmp_path, edit):
    """The store knew its images by path only: a distractor downloaded again, or an unreadable one
    repaired, kept the old descriptor (or its place in skipped.txt) without a word."""
    images = _photos(tmp_path / "photos")
    store = DescriptorStore.create(tmp_path / "s", images, KEY, 3)
    store.fill(Encoder())
    changed = tmp_path / "photos" / "img005.jpg"
    if edit == "rewritten":
        changed.write_bytes(b"another photo")
    elif edit == "touched":
        os.utime(changed, ns=(changed.stat().st_mtime_ns + 10**9,) * 2)
    else:
        changed.unlink()
    assert DescriptorStore.create(tmp_path / "s", images, KEY, 3).stale_shards() == [1]
    with pytest.raises(StoreMismatch, match=r"the images of 1 shard\(s\) changed since they were encoded \(images 5 "
                                            r"to 8 of images.txt.*delete shard_00001.npy and shard_00001.json and run"):
        DescriptorStore.create(tmp_path / "s", images, KEY, 3).fill(Encoder())
    if edit == "removed":
        changed.write_bytes(b"back")
    store.shard_path(1).unlink()
    (tmp_path / "s" / "shard_00001.json").unlink()
    again = Shifted()
    assert DescriptorStore.create(tmp_path / "s", images, KEY, 3).fill(again) == 1 and again.calls == [images[4:8]]
    expected = descriptors(images)
    expected[:, 4:8] += 1
    np.testing.assert_array_equal(open_store(tmp_path / "s").load(), expected)  # its new sha256 recorded
    assert open_store(tmp_path / "s").stale_shards() == []


def test_a_shard_written_before_images_were_recorded_is_stale_when_an_image_is_newer(tmp_path):
    images = _photos(tmp_path / "photos")
    store = DescriptorStore.create(tmp_path / "s", images, KEY, 3)
    store.fill(Encoder())
    for k in range(store.shards):  # as an earlier aml wrote them: the skipped images alone
        (tmp_path / "s" / f"shard_{k:05d}.json").write_text(json.dumps({"skipped": []}))
    assert store.stale_shards() == []
    later = store.shard_path(2).stat().st_mtime_ns + 10**9
    os.utime(images[9], ns=(later, later))
    assert store.stale_shards() == [2]


def test_the_same_names_below_another_folder_are_other_images_where_the_listed_ones_differ(tmp_path):
    """day2/DSC_0000.jpg ... counted as day1's images moved: indexing them replaced day1's store
    without --replace. Moved (the listed images gone) or copied (same sizes), they are the same."""
    from aml.descriptors.store import store_differences

    def photos(folder, sizes):
        folder.mkdir()
        for i, size in enumerate(sizes):
            (folder / f"DSC_{i:04d}.jpg").write_bytes(b"x" * size)
        return [str(folder / f"DSC_{i:04d}.jpg") for i in range(len(sizes))]

    day1 = photos(tmp_path / "day1", [10, 11, 12])
    DescriptorStore.create(tmp_path / "store", day1, KEY, 3).fill(lambda images, skipped: np.ones((3, len(images))))
    day2 = photos(tmp_path / "day2", [10, 20, 12])
    assert store_differences(tmp_path / "store", day2, KEY) == ["other images (it holds 3)"]
    copy = shutil.copytree(tmp_path / "day1", tmp_path / "copy")
    assert store_differences(tmp_path / "store", [str(copy / os.path.basename(p)) for p in day1][::-1], KEY) == []
    moved = (tmp_path / "day1").rename(tmp_path / "moved")
    assert store_differences(tmp_path / "store", [str(moved / os.path.basename(p)) for p in day1], KEY) == []


def test_a_store_of_images_moved_below_another_folder_is_used_where_they_are_now(tmp_path):
    """A data root copied or moved elsewhere (cp -a, mv) made its +1M distractor store "made for
    other descriptors": the only fix offered was encoding the million images again."""
    first = tmp_path / "data" / "jpg"
    first.mkdir(parents=True)
    for i, name in enumerate(IMAGES):
        (first / name).write_bytes(b"x" * (i + 1))
    encode = Encoder()
    DescriptorStore.create(tmp_path / "store", [str(first / n) for n in IMAGES], KEY, 3).fill(encode)
    moved = shutil.copytree(tmp_path / "data", tmp_path / "elsewhere") / "jpg"  # sizes and times kept
    images = [str(moved / n) for n in IMAGES]
    store = DescriptorStore.create(tmp_path / "store", images, KEY, 3)
    assert store.fill(encode) == 0 and store.images == images
    np.testing.assert_array_equal(open_store(tmp_path / "store").load(), descriptors(IMAGES))
    (moved / IMAGES[5]).write_bytes(b"another image")  # the listed one still there, of another size: others
    with pytest.raises(StoreMismatch, match="was made for other descriptors"):
        DescriptorStore.create(tmp_path / "store", images, KEY, 3)
    shutil.rmtree(tmp_path / "data")  # moved away, then changed where it is now: its shard is stale
    with pytest.raises(StoreMismatch, match=r"the images of 1 shard\(s\) changed since they were"):
        DescriptorStore.create(tmp_path / "store", images, KEY, 3).fill(encode)
    others = [str(moved / n) for n in IMAGES[::-1]]  # other names in each place: other images
    with pytest.raises(StoreMismatch, match="was made for other descriptors"):
        DescriptorStore.create(tmp_path / "store", others, KEY, 3)


def test_a_store_read_as_feature_file_says_changed_images_not_missing_ones(tmp_path):
    """changed_since_written took a deleted image for a changed one (its own message, naming the
    file, comes when it is loaded), and said nothing of one changed in place."""
    from aml.descriptors import changed_since_written

    folder = tmp_path / "jpg"
    folder.mkdir()
    images = []
    for i, name in enumerate(IMAGES[:3]):
        (folder / name).write_bytes(b"x" * (i + 1))
        images.append(str(folder / name))
    DescriptorStore.create(tmp_path / "store", images, KEY, 3).fill(lambda batch, skipped: np.ones((3, len(batch))))
    assert not changed_since_written(tmp_path / "store", images)
    (folder / IMAGES[2]).write_bytes(b"another")
    assert changed_since_written(tmp_path / "store", images)
    (folder / IMAGES[2]).unlink()
    assert not changed_since_written(tmp_path / "store", images)


def test_a_shard_written_by_another_process_first_keeps_its_own_skipped_list(tmp_path):
    """Two runs filling one store both encode a shard: the first one's array stayed, and the
    second one's list of skipped images replaced the first's, so an unreadable image's zero row
    was searched as a distractor (or a good one left out)."""
    store = DescriptorStore.create(tmp_path / "s", IMAGES, KEY, 3)
    first = descriptors(IMAGES[:4])
    store.write_shard(0, first)  # the other run: every image read
    late = first.copy()
    late[:, 1] = 0
    store.write_shard(0, late, skipped=[1])  # this run: image 1 unreadable, finished second
    assert store.skipped() == [] and np.array_equal(store.read_shard(0), first.T)
