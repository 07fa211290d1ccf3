"""The sharded descriptor store: layout, atomic shards, restart at the first missing shard,
refusal of a manifest of another network or image list, skipped images."""

import json

import numpy as np
import pytest

from aml.descriptors.key import DescriptorKey
from aml.descriptors.store import DescriptorStore, StoreKey, StoreMismatch

IMAGES = [f"img{i:03d}.jpg" for i in range(10)]
KEY = StoreKey(DescriptorKey("f" * 16, 64), "net", "float32", 4)


def descriptors(images):
    """Deterministic D=3 descriptors per image name (D x n)."""
    return np.array([[len(i), int(i[3:6]), 1.0] for i in images], dtype=np.float32).T


class Encoder:
    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, images, skipped):
        if self.fail_at is not None and self.fail_at in images:
            raise KeyboardInterrupt  # the run is interrupted while encoding this shard
        self.calls.append(list(images))
        return descriptors(images)


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
