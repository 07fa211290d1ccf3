"""Feature files and the database cache: one unit on disk, keyed by what changes them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import aml.descriptors.files as features
from aml.descriptors import DescriptorKey, ExtractionConfig
from aml.descriptors import (cached_descriptors, evict, feature_file_name, feature_file_settings, load_feature_file,
                             write_feature_file)
from aml.networks import build_network


def test_feature_file_name_carries_the_image_size():
    assert feature_file_name("synth-sfm", "resnet18-gem", "val", 1024) == "synth-sfm-val_resnet18-gem_imsize1024.npy"
    assert feature_file_name("roxford5k", "vgg16", None, 362) == "roxford5k_vgg16_imsize362.npy"


def test_settings_belong_to_the_files_beside_them(tmp_path, monkeypatch):
    path = tmp_path / "set_net_imsize64.npy"
    write_feature_file(np.ones((4, 3), np.float32), ["a", "b", "c"], path, {"fingerprint": "A"})
    assert feature_file_settings(path)["fingerprint"] == "A" and feature_file_settings(path)["columns"] == 3
    real = features.atomic_write

    settings_written = []

    def crash_on_settings(target, write):
        if str(target).endswith(".json"):
            settings_written.append(target)
            if len(settings_written) == 2:  # the mark of a write in progress, the array, the list: killed
                raise KeyboardInterrupt
        return real(target, write)

    monkeypatch.setattr(features, "atomic_write", crash_on_settings)
    with pytest.raises(KeyboardInterrupt):
        write_feature_file(np.zeros((4, 5), np.float32), list("abcde"), path, {"fingerprint": "B"})
    monkeypatch.setattr(features, "atomic_write", real)
    assert feature_file_settings(path) is None  # not A's settings next to B's array
    write_feature_file(np.ones((4, 3), np.float32), ["a", "b", "c"], path, {"fingerprint": "A"})
    path.with_name("set_net_imsize64_img_list.txt").write_text("a\nb\nx\n")  # edited by hand
    assert feature_file_settings(path) is None
    json.loads(path.with_name(path.name + ".json").read_text())  # the sidecar itself is intact
    write_feature_file(np.ones((4, 3), np.float32), ["a", "b", "c"], path, {"fingerprint": "A"})
    with open(path.with_name(path.name + ".json"), "ab") as out:
        out.truncate(1 << 40)  # a sparse terabyte: not read, not the settings aml writes
    assert feature_file_settings(path) is None


def test_a_folder_where_the_settings_go_is_named_before_the_features_are_written(tmp_path):
    """A folder named like the settings file ended in a traceback (IsADirectoryError)."""
    path = tmp_path / "db.npy"
    path.with_name("db.npy.json").mkdir()
    with pytest.raises(features.InTheWay, match=r"db\.npy\.json is a folder where aml writes db\.npy's settings"):
        write_feature_file(np.ones((4, 3), np.float32), ["a", "b", "c"], path)
    assert not path.exists()  # no features left without their settings


def test_a_feature_file_whose_settings_were_edited_has_no_key(tmp_path):
    """main.py reads the teacher's features when their key matches: settings of the wrong types
    were a TypeError; now they match nothing, so the features are extracted again."""
    path = tmp_path / "set_net_imsize64.npy"
    key = DescriptorKey("ab" * 8, 64)
    write_feature_file(np.ones((4, 3), np.float32), ["a", "b", "c"], path, key.record())
    assert features.feature_file_key(path) == key
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), scales=2)))
    assert features.feature_file_settings(path) is not None and features.feature_file_key(path) is None


def test_non_finite_feature_file_is_refused(tmp_path):
    vecs = np.ones((4, 6), np.float32)
    vecs[0, 2] = np.inf
    np.save(tmp_path / "f.npy", vecs)
    with pytest.raises(ValueError, match=r"f.npy holds NaN or infinite values in 1 of 6 columns \(first: column 2\)"):
        load_feature_file(tmp_path / "f.npy", 6)


def test_database_cache_is_keyed_by_file_contents(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(paths[-1])
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False).eval()
    images = [str(p) for p in paths]
    first = cached_descriptors(net, images, DescriptorKey.of(net, 48), tmp_path / "cache", "t", config=ExtractionConfig(workers=0))
    again = cached_descriptors(net, images, DescriptorKey.of(net, 48), tmp_path / "cache", "t", config=ExtractionConfig(workers=0))
    assert np.array_equal(first, again) and len(list((tmp_path / "cache").iterdir())) == 1
    paths[0].write_bytes(paths[1].read_bytes())  # replaced in place, same path
    changed = cached_descriptors(net, images, DescriptorKey.of(net, 48), tmp_path / "cache", "t", config=ExtractionConfig(workers=0))
    assert np.allclose(changed[:, 0], first[:, 1], atol=1e-5) and not np.allclose(changed[:, 0], first[:, 0])


def test_a_cache_file_of_another_shape_or_type_is_encoded_again(tmp_path, caplog, lock):
    """A cache file of the right name but the wrong rows or of strings was returned, or a TypeError."""
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False).eval()
    key, images = DescriptorKey.of(net, 48), [str(tmp_path / "a.jpg")]
    path = tmp_path / "cache" / f"t_{key.digest(images)}.npy"
    path.parent.mkdir()
    for wrong in (np.ones((7, 1), np.float32), np.array([["x"] * 1] * 512)):
        np.save(path, wrong)
        vecs = cached_descriptors(net, images, key, path.parent, "t", config=ExtractionConfig(workers=0))
        assert vecs.shape == (512, 1) and "is unreadable or stale; encoding again" in caplog.text
    caplog.clear()
    _damage_header(path, b"(512, 1)", b"(512, 1(")  # numpy's tokenizer's TokenError was a traceback
    vecs = cached_descriptors(net, images, key, path.parent, "t", config=ExtractionConfig(workers=0))
    assert vecs.shape == (512, 1) and "is unreadable or stale; encoding again" in caplog.text
    caplog.clear()
    lock(path)  # another user's cache in a shared data root: optional, encoded again (NoAccess stopped test.py)
    vecs = cached_descriptors(net, images, key, path.parent, "t", config=ExtractionConfig(workers=0))
    assert vecs.shape == (512, 1) and "is unreadable or stale; encoding again" in caplog.text


def _damage_header(path, old: bytes, new: bytes) -> None:
    """Replace bytes of a .npy file's header (a byte flipped on a disk or in a copy)."""
    data = path.read_bytes()
    assert old in data[:128] and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))


def test_a_feature_file_of_a_damaged_header_or_of_long_doubles_is_named(tmp_path):
    """A changed header byte raised tokenize's TokenError or a SyntaxError, a header claiming
    more values than the file holds a MemoryError (166 GiB), float128 values a TypeError."""
    from aml.utils.errors import DataError

    path = tmp_path / "feats.npy"
    for old, new, problem in ((b"(8, 5)", b"(8, 5(", r"a damaged .npy header \(TokenError"),
                              (b"'<f4'", b"'<04'", r"a damaged .npy header \(SyntaxError"),
                              (b"(8, 5)", b"(8, 9)", r"its header says \(8, 9\) float32 values, 288 bytes, but 160 "
                                                     r"follow it: the file is truncated or its header damaged")):
        np.save(path, np.eye(8, 5, dtype=np.float32))
        _damage_header(path, old, new)
        with pytest.raises(DataError, match=rf"feats.npy is not a readable .npy array \({problem}"):
            load_feature_file(path, expected_columns=5)
    with open(path, "wb") as handle:  # a header of 44 billion values before 8 bytes
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (8, 5555555555)})
        handle.write(bytes(8))
    with pytest.raises(DataError, match=r"its header says \(8, 5555555555\) float32 values, 177777777760 bytes, but 8"):
        load_feature_file(path, expected_columns=5555555555)
    with open(path, "wb") as handle:  # the same in format 3 (UTF-8 headers)
        np.lib.format.write_array_header_2_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (8, 10 ** 9)})
        handle.write(bytes(8))
    data = path.read_bytes()
    path.write_bytes(data[:6] + b"\x03" + data[7:])
    with pytest.raises(DataError, match=r"its header says \(8, 1000000000\) float32 values"):
        load_feature_file(path, expected_columns=10 ** 9)
    np.save(path, np.array([None] * 100), allow_pickle=True)  # pickles: fewer bytes than 8 per value
    with pytest.raises(DataError, match=r"feats.npy is not a readable .npy array \(Object arrays cannot be loaded"):
        load_feature_file(path, expected_columns=100)
    np.save(path, np.eye(8, 5, dtype=np.longdouble))
    with pytest.raises(DataError, match=r"feats.npy holds float128 values, not float16, float32 or float64 descriptors"):
        load_feature_file(path, expected_columns=5)


def test_a_feature_file_too_large_for_the_memory_is_not_called_damaged(tmp_path, monkeypatch):
    """numpy's MemoryError for a whole file was 'a damaged .npy header': extract it again."""
    path = tmp_path / "feats.npy"
    np.save(path, np.eye(8, 5, dtype=np.float32))

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 160. B for an array with shape (8, 5) and data type float32")

    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    with pytest.raises(MemoryError, match="Unable to allocate"):
        load_feature_file(path, expected_columns=5)


def test_a_damaged_cache_is_said_by_process_0_alone(tmp_path, caplog, monkeypatch):
    """Every process of a torchrun job reads the cache: each said so, 8 lines on 8 GPUs."""
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    net = build_network("resnet18", pretrained=False).eval()
    key, images = DescriptorKey.of(net, 48), [str(tmp_path / "a.jpg")]
    path = tmp_path / "cache" / f"t_{key.digest(images)}.npy"
    path.parent.mkdir()
    path.write_bytes(b"garbage")
    monkeypatch.setenv("RANK", "1")
    cached_descriptors(net, images, key, path.parent, "t", config=ExtractionConfig(workers=0))
    assert "unreadable or stale" not in caplog.text


def test_feature_files_keep_names_that_are_not_utf8_and_refuse_other_values(tmp_path):
    names = ["a.jpg", b"caf\xe9.jpg".decode(errors="surrogateescape")]
    path = write_feature_file(np.ones((4, 2), np.float32), names, tmp_path / "db.npy", {"network": "n"})
    assert feature_file_settings(path)["columns"] == 2
    path.with_name(path.name + ".json").write_text("[1, 2]")
    assert feature_file_settings(path) is None  # settings that are not an object: no settings
    np.save(tmp_path / "strings.npy", np.array([["x", "y"]] * 4))
    with pytest.raises(ValueError, match=r"strings.npy holds <U1 values, not float16, float32 or float64 descriptors"):
        load_feature_file(tmp_path / "strings.npy", 2)


def test_cache_keeps_the_most_recently_used_files_per_data_set(tmp_path):
    import os
    import time

    now = time.time()
    for i in range(5):
        path = tmp_path / f"synth-oxford_{i:016x}.npy"
        np.save(path, np.zeros((2, 2), np.float32))
        os.utime(path, (now - 100 + i, now - 100 + i))
    np.save(tmp_path / "synth-paris_0.npy", np.zeros((2, 2), np.float32))
    np.save(tmp_path / "synth-oxford_mirror_0000000000000000.npy", np.zeros((2, 2), np.float32))  # another set
    evicted = evict(tmp_path, "synth-oxford", keep=2)
    assert sorted(p.name for p in evicted) == [f"synth-oxford_{i:016x}.npy" for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth-oxford_0000000000000003.npy",
                                                        "synth-oxford_0000000000000004.npy",
                                                        "synth-oxford_mirror_0000000000000000.npy",
                                                        "synth-paris_0.npy"]


def test_a_feature_file_of_no_dimension_or_a_folder_is_named(tmp_path):
    """A 0 x N teacher feature file trained into a RuntimeError (mat1 and mat2 shapes cannot be multiplied)."""
    from aml.utils.errors import DataError

    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(DataError, match=r"empty.npy has shape \(0, 3\), expected D x 3 .*D a descriptor dimension"):
        load_feature_file(tmp_path / "empty.npy", 3)
    with pytest.raises(DataError, match=rf"feature file {tmp_path} is a folder without a store's manifest.json"):
        load_feature_file(tmp_path, 3)


def test_a_feature_file_of_zero_columns_or_of_another_format_is_named(tmp_path):
    """An all-zero file trained ts at a constant loss of 0.5 without a word; a JPEG given as
    --feat-path got numpy's advice about pickles."""
    from aml.utils.errors import DataError

    path = tmp_path / "feats.npy"
    vecs = np.eye(8, 5, dtype=np.float32)
    vecs[:, 3] = 0
    np.save(path, vecs)
    with pytest.raises(DataError, match=r"feats.npy holds 1 all-zero columns of 5 \(first: column 3\): a descriptor "
                                        r"is never zero"):
        load_feature_file(path, expected_columns=5)
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    with pytest.raises(DataError, match="feats.npy is a JPEG image, not a .npy array; give the file extract_features"):
        load_feature_file(path, expected_columns=5)
    # a zip (the teacher's checkpoint given by a slip, an .npz): numpy opens it as an archive,
    # and the next line was an AttributeError ('NpzFile' object has no attribute 'dtype')
    torch.save({"state_dict": {}}, path)
    with pytest.raises(DataError, match=r"feats.npy is not a readable .npy array \(a zip archive \(.npz or a PyTorch"):
        load_feature_file(path, expected_columns=5)
    np.savez(tmp_path / "feats.npz", vecs=np.eye(8, 5, dtype=np.float32))
    with pytest.raises(DataError, match=r"feats.npz is not a readable .npy array \(a zip archive"):
        load_feature_file(tmp_path / "feats.npz", expected_columns=5)


def test_a_feature_file_of_columns_that_are_not_unit_is_warned_of(tmp_path, caplog):
    """A user's own teacher descriptors, not L2-normalised, trained the student towards vectors
    its unit descriptors cannot reach, without a word."""
    path = tmp_path / "feats.npy"
    vecs = np.eye(8, 5, dtype=np.float32)
    np.save(path, vecs.astype(np.float16))  # unit columns, stored in float16: no warning
    load_feature_file(path, expected_columns=5)
    assert "not L2-normalised" not in caplog.text
    vecs[:, 1] *= 3
    vecs[:, 4] *= 0.5
    np.save(path, vecs)
    np.testing.assert_array_equal(load_feature_file(path, expected_columns=5), vecs)  # used as given
    assert "feats.npy: 2 of 5 columns are not L2-normalised (norms 0.5 to 3; first: column 1)" in caplog.text


def test_two_runs_writing_one_feature_file_never_pair_one_array_with_the_others_settings(tmp_path, monkeypatch):
    """main.py's teacher features and an extract_features.py run of the same name wrote the
    three files unlocked: one run's settings could land beside the other's array, which a run
    asking for the first key then took as its teacher."""
    import threading

    path = tmp_path / "set_net_imsize64.npy"
    real_save = features._atomic_save
    saved, release = threading.Event(), threading.Event()

    def pausing_save(target, array):
        real_save(target, array)
        if threading.current_thread().name == "A":  # A pauses between its array and its settings
            saved.set()
            release.wait(5)

    monkeypatch.setattr(features, "_atomic_save", pausing_save)
    a = threading.Thread(name="A", target=write_feature_file,
                         args=(np.zeros((4, 3), np.float32), ["a", "b", "c"], path, {"fingerprint": "A"}))
    b = threading.Thread(name="B", target=write_feature_file,
                         args=(np.ones((4, 3), np.float32), ["a", "b", "c"], path, {"fingerprint": "B"}))
    a.start()
    saved.wait(5)
    b.start()
    b.join(0.3)  # B waits for A's lock (without it, B wrote all three files meanwhile)
    release.set()
    a.join(5)
    b.join(5)
    settings, array = feature_file_settings(path), np.load(path)
    assert settings is not None and settings["fingerprint"] == {0.0: "A", 1.0: "B"}[float(array[0, 0])]


def test_a_feature_file_written_again_while_it_is_read_is_not_reused(tmp_path, monkeypatch):
    """The settings were checked, then the array loaded: another run's array put there in
    between was taken under the first one's key."""
    key = DescriptorKey("f" * 16, 64)
    path = write_feature_file(np.eye(4, 3, dtype=np.float32), ["a", "b", "c"], tmp_path / "db.npy", key.record())
    real_load = features.load_feature_file

    def load_while_another_run_writes(target, columns, *args):
        vecs = real_load(target, columns, *args)
        write_feature_file(np.eye(4, 3, 1, dtype=np.float32), ["a", "b", "c"], target, {"scales": [1, 2]})
        return vecs

    monkeypatch.setattr(features, "load_feature_file", load_while_another_run_writes)
    assert features.reusable_feature_file(path, key, ["a", "b", "c"]) is None


def test_a_feature_file_goes_into_a_folder_made_for_it(tmp_path):
    """Its lock went beside it before the folder was made: FileNotFoundError for a new data root."""
    path = write_feature_file(np.eye(4, 3, dtype=np.float32), ["a", "b", "c"], tmp_path / "features" / "db.npy")
    assert feature_file_settings(path)["columns"] == 3 and sorted(p.name for p in path.parent.iterdir()) == [
        "db.npy", "db.npy.json", "db_img_list.txt"]


def test_a_feature_file_is_never_labelled_with_other_pixels_than_its_descriptors(synth_root, tmp_path):
    """The file's settings came from the key, its descriptors from the config: a key built for
    float32 with a bfloat16 config wrote bfloat16 descriptors labelled pil-fp32."""
    from aml.descriptors import DescriptorKey, ExtractionConfig, extract_dataset_features
    from aml.networks import LoadedNetwork, build_network
    from aml.utils.errors import ConfigError

    net = build_network("resnet18", pretrained=False)
    network = LoadedNetwork.in_memory(net, "r18")
    config = ExtractionConfig(workers=0, amp=True, amp_dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"the key says .* pil-fp32, the extraction config as pil-bf16"):
        extract_dataset_features(network, "synth-oxford", "db", DescriptorKey.of(net, 32), synth_root,
                                 output=tmp_path / "f.npy", config=config)
    assert not (tmp_path / "f.npy").exists()


def test_a_run_writes_beside_a_file_of_other_settings_written_while_it_encoded(synth_root, tmp_path, monkeypatch):
    """Two extractions of one teacher with other settings, started together, both chose the usual
    name before encoding: the last one wrote over the other's file."""
    from aml.descriptors import extract_dataset_features
    from aml.networks import LoadedNetwork

    net = build_network("resnet18", pretrained=False)
    network = LoadedNetwork.in_memory(net, "r18")
    key = DescriptorKey.of(net, 32, fingerprint="a" * 16)
    other = DescriptorKey.of(net, 32, (1, 0.5), fingerprint="a" * 16)
    encode = features.describe_images

    def meanwhile(*args, **kwargs):  # the other run finishes first, under the usual name
        usual = synth_root / "features" / feature_file_name("synth-oxford", "r18", None, 32)
        write_feature_file(np.zeros((512, 2), dtype=np.float32), ["x", "y"], usual, other.record())
        return encode(*args, **kwargs)

    monkeypatch.setattr(features, "describe_images", meanwhile)
    usual = synth_root / "features" / feature_file_name("synth-oxford", "r18", None, 32)
    try:
        path = extract_dataset_features(network, "synth-oxford", "db", key, synth_root,
                                        config=ExtractionConfig(workers=0))
        assert path != usual and path.parent == usual.parent
        assert features.feature_file_key(usual) == other and features.feature_file_key(path) == key
    finally:  # the data root is the session's
        for written in usual.parent.glob("synth-oxford_r18_*"):
            written.unlink()


def test_settings_disown_their_files_only_when_they_record_them(tmp_path):
    """A feature file being written is disowned by its settings; one with no settings (the
    original's) or with the settings of aml's first release, which recorded no sizes, is not."""
    from aml.descriptors.files import invalidate_feature_file, settings_not_its_own

    path = write_feature_file(np.ones((4, 3), np.float32), ["a", "b", "c"], tmp_path / "db.npy", {"fingerprint": "A"})
    assert not settings_not_its_own(path)
    invalidate_feature_file(path)
    assert settings_not_its_own(path) and feature_file_settings(path) is None
    path.with_name("db.npy.json").write_text('{"network": "vgg16", "image_size": 64}')  # aml's first release
    assert not settings_not_its_own(path)
    path.with_name("db.npy.json").unlink()  # the original's files
    assert not settings_not_its_own(path)


def test_a_stores_dtype_without_a_store_is_refused(tmp_path):
    """store_dtype="float16" without shard_size wrote a float32 .npy without a word (the command
    line refused it; the function took it)."""
    from aml.descriptors import DescriptorKey, extract_dataset_features
    from aml.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="store_dtype='float16' sets a descriptor store's dtype: give shard_size"):
        extract_dataset_features(None, "synth-sfm", "train", DescriptorKey("0" * 16, 64), data_root=tmp_path,
                                 store_dtype="float16")


def test_the_cache_and_the_stores_never_file_descriptors_under_other_pixels(tmp_path):
    """cached_descriptors and encode_into_store encoded with the config and filed under the
    key: a key built for float32 with a bfloat16 config cached bfloat16 descriptors as pil-fp32,
    which every later float32 call then read."""
    from aml.descriptors import DescriptorKey, ExtractionConfig
    from aml.descriptors.store import StoreKey, encode_into_store
    from aml.utils.errors import ConfigError

    net = build_network("resnet18", pretrained=False)
    config = ExtractionConfig(workers=0, amp=True, amp_dtype="bfloat16")
    key = DescriptorKey.of(net, 32)
    with pytest.raises(ConfigError, match=r"the key says .* pil-fp32, the extraction config as pil-bf16"):
        cached_descriptors(net, ["a.jpg"], key, tmp_path / "cache", "tag", config=config)
    with pytest.raises(ConfigError, match=r"the key says .* pil-fp32, the extraction config as pil-bf16"):
        encode_into_store(net, ["a.jpg"], tmp_path / "store", StoreKey(key, "r18", "float32", 8), config)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "store").exists()
