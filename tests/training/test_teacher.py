"""The teacher's descriptors of a training split: encoded once, kept under their key, reused."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aml.data.trainsets import load_training_db
from aml.descriptors import ExtractionConfig, feature_file_key
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from aml.training import teacher as teacher_module
from aml.training.teacher import Teacher, teacher_split_features


@pytest.fixture
def teacher(synth_root, tmp_path):
    torch.manual_seed(5)
    path = save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0),
                           tmp_path / "model_best.pth.tar")
    return Teacher(str(path), str(synth_root))


def test_the_split_is_encoded_once_and_read_back_under_its_key(teacher, synth_root, monkeypatch):
    encoded = []
    real = teacher_module.describe_images
    monkeypatch.setattr(teacher_module, "describe_images", lambda net, images, *a, **k: encoded.append(len(images))
                        or real(net, images, *a, **k))
    images = load_training_db("synth-sfm", "val", synth_root)["images"]
    config = ExtractionConfig(workers=0)
    first = teacher_split_features(teacher, "synth-sfm", "val", images, 48, config=config)
    assert first.shape == (512, len(images)) and encoded == [len(images)]
    path = synth_root / "features" / f"synth-sfm-val_{teacher.loaded.feature_name}_imsize48.npy"
    assert feature_file_key(path).fingerprint == teacher.loaded.fingerprint and feature_file_key(path).image_size == 48
    again = teacher_split_features(teacher, "synth-sfm", "val", images, 48, config=config)
    assert encoded == [len(images)] and torch.equal(first, again)  # read from the file, not encoded again
    device = teacher_split_features(teacher, "synth-sfm", "val", images, 48, config=config.but(decode="device"))
    assert encoded == [len(images)] * 2  # another pixel path: another key, encoded again
    # ... into a file beside the first, which stays (an extract_features.py -ms file was replaced)
    np.testing.assert_array_equal(np.load(path), first.numpy())
    beside = sorted(path.parent.glob(f"{path.stem}_*[0-9a-f].npy"))
    assert len(beside) == 1 and feature_file_key(beside[0]).pixels != feature_file_key(path).pixels
    np.testing.assert_array_equal(np.load(beside[0]), device.numpy())
    teacher_split_features(teacher, "synth-sfm", "val", images, 48, config=config.but(decode="device"))
    assert encoded == [len(images)] * 2  # found beside it


def test_a_split_whose_images_changed_under_the_same_names_is_encoded_again(synth_root, tmp_path, monkeypatch):
    """The file was reused by its key and column count alone: a training set generated again
    (python -m aml.cli.synthetic --overwrite) trained against the old images' descriptors."""
    import shutil

    torch.manual_seed(5)
    path = save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0),
                           tmp_path / "teacher.pth.tar")
    teacher = Teacher(str(path), str(tmp_path / "root"))
    source = load_training_db("synth-sfm", "val", synth_root)["images"][:4]
    images = [str(tmp_path / f"{i}.jpg") for i in range(4)]
    for original, copy in zip(source, images):
        shutil.copyfile(original, copy)
    encoded = []
    real = teacher_module.describe_images
    monkeypatch.setattr(teacher_module, "describe_images", lambda net, images, *a, **k: encoded.append(len(images))
                        or real(net, images, *a, **k))
    config = ExtractionConfig(workers=0)
    first = teacher_split_features(teacher, "mine", "train", images, 32, config=config)
    teacher_split_features(teacher, "mine", "train", images, 32, config=config)
    assert encoded == [4]
    shutil.copyfile(source[0], images[1])  # made again: another picture under the same name
    again = teacher_split_features(teacher, "mine", "train", images, 32, config=config)
    assert encoded == [4, 4] and not torch.equal(first, again) and torch.equal(again[:, 0], again[:, 1])


def test_a_feat_path_file_of_other_images_or_of_another_network_is_refused_by_name(tmp_path):
    """A --feat-path file was checked for its shape alone: one of the same size made for another
    set (or the set in another order) paired image j with another image's teacher descriptor,
    and one encoded by another 512-d network trained against it as the --teacher's."""
    from aml.descriptors import DescriptorKey, write_feature_file
    from aml.utils.errors import DataError

    images = [str(tmp_path / "data" / "train" / "set" / f"{k}.jpg") for k in range(3)]
    vecs = np.eye(512, 3, dtype=np.float32)
    made = dict(DescriptorKey("3f2a9c0d1e2b4a5c", 64).record(), network="retrievalSfM120k-vgg16-gem")
    path = write_feature_file(vecs, images, tmp_path / "feats.npy", made)
    vgg16 = Teacher("vgg16")
    np.testing.assert_array_equal(teacher_split_features(vgg16, "set", "train", images, 64, str(path)).numpy(), vecs)
    moved = [image.replace(str(tmp_path / "data"), "/elsewhere/data") for image in images]
    assert teacher_split_features(vgg16, "set", "train", moved, 64, str(path)).shape == (512, 3)  # a data root moved
    with pytest.raises(DataError, match=r"feats.npy describes other images than the training split's: its column 0 "
                                        r"is .*0.jpg, the split's image 0 is .*2.jpg"):
        teacher_split_features(vgg16, "set", "train", images[::-1], 64, str(path))
    with pytest.raises(DataError, match=r"feats.npy was encoded by retrievalSfM120k-vgg16-gem, not by --teacher "
                                        r".*model_best.pth.tar \(model_best\)"):
        teacher_split_features(Teacher(str(tmp_path / "model_best.pth.tar")), "set", "train", images, 64, str(path))
    (tmp_path / "feats_img_list.txt").unlink()  # a file that says nothing of its images: its shape alone
    (tmp_path / "feats.npy.json").unlink()
    assert teacher_split_features(vgg16, "set", "train", images[::-1], 64, str(path)).shape == (512, 3)


def test_a_feature_file_whose_write_was_interrupted_is_refused(tmp_path):
    """An extract_features.py stopped while it wrote a feature file again left the earlier .npy
    and image list without settings, which --feat-path then took as the original's files: a
    split changed since, refused before, trained on stale descriptors without a word."""
    from aml.descriptors import DescriptorKey, write_feature_file
    from aml.descriptors.files import invalidate_feature_file
    from aml.utils.errors import DataError

    images = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    vecs = np.linalg.qr(np.random.default_rng(0).normal(size=(512, 3)))[0].astype(np.float32)
    made = dict(DescriptorKey("3f2a9c0d1e2b4a5c", 64).record(), network="retrievalSfM120k-vgg16-gem")
    path = write_feature_file(vecs, images, tmp_path / "feats.npy", made)
    invalidate_feature_file(path)  # what an interrupted write leaves, before its new .npy is in place
    with pytest.raises(DataError, match=r"feats.npy is incomplete: its settings \(.*feats.npy.json\) are not those "
                                        r"of the .npy and image list beside it .*; extract it again"):
        teacher_split_features(Teacher("vgg16"), "set", "train", images, 64, str(path))
    write_feature_file(vecs, images, path, made)  # written whole again: taken
    assert teacher_split_features(Teacher("vgg16"), "set", "train", images, 64, str(path)).shape == (512, 3)


def test_a_read_only_data_root_trains_on_the_teacher_descriptors_it_could_not_cache(synth_root, tmp_path, monkeypatch,
                                                                                    caplog):
    """main.py -m ts on a shared, read-only data root encoded every teacher descriptor, then
    ended in a traceback writing their cache."""
    import errno

    torch.manual_seed(5)
    path = save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0),
                           tmp_path / "teacher.pth.tar")
    images = load_training_db("synth-sfm", "val", synth_root)["images"][:3]

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "root" / "features"))

    monkeypatch.setattr(teacher_module, "write_feature_file", read_only)
    with caplog.at_level("WARNING", logger="aml"):
        vecs = teacher_split_features(Teacher(str(path), str(tmp_path / "root")), "synth-sfm", "val", images, 32,
                                      config=ExtractionConfig(workers=0))
    assert vecs.shape[1] == 3 and torch.isfinite(vecs).all()
    assert "the teacher descriptors' cache not written ([Errno 30] Read-only file system" in caplog.text


def test_a_feat_path_file_of_other_weights_is_refused_once_the_teacher_loads(teacher, tmp_path, caplog):
    """A --feat-path file was checked against the teacher's name alone: one encoded by another
    checkpoint of the same name trained the student, and --test-freq tested it asymmetrically
    against the other weights, without a word; one of another image size trained on silently."""
    from aml.descriptors import DescriptorKey, write_feature_file
    from aml.utils.errors import DataError

    images = [str(tmp_path / f"{k}.jpg") for k in range(3)]
    right = teacher.loaded.fingerprint
    for name, fingerprint in (("other.npy", "3f2a9c0d1e2b4a5c"), ("right.npy", right)):
        write_feature_file(np.eye(512, 3, dtype=np.float32), images, tmp_path / name,
                           dict(DescriptorKey(fingerprint, 64).record(), network="model_best"))
    given = Teacher(str(tmp_path / "model_best.pth.tar"), None, [str(tmp_path / "right.npy")])
    assert given.loaded.fingerprint == right
    with caplog.at_level("WARNING", logger="aml.training.teacher"):
        assert teacher_split_features(given, "set", "train", images, 64, str(tmp_path / "right.npy")).shape == (512, 3)
        assert not caplog.records
        teacher_split_features(given, "set", "train", images, 48, str(tmp_path / "right.npy"))
    assert "right.npy was encoded at image size 64, this run trains at --image-size 48" in caplog.text
    other = Teacher(str(tmp_path / "model_best.pth.tar"), None, [str(tmp_path / "right.npy"), str(tmp_path / "other.npy")])
    with pytest.raises(DataError, match=r"other.npy was encoded by other weights than --teacher .*model_best.pth.tar's "
                                        rf"\(fingerprints 3f2a9c0d and {right[:8]}\): .* give the --teacher it was"):
        other.loaded


def test_a_feat_path_file_of_changed_images_other_scales_or_two_teachers_is_refused_or_named(tmp_path, caplog):
    """--feat-path took a file whose images had been generated again under the same names (each
    column the old image's descriptor), one encoded at several scales without a word, and a
    --feat-val-path of another teacher's weights than --feat-path's when the teacher was not
    loaded (validation then measured another space, and chose model_best by it)."""
    from aml.descriptors import DescriptorKey, write_feature_file
    from aml.utils.errors import DataError

    folder = tmp_path / "data" / "train" / "set"
    folder.mkdir(parents=True)
    images = [str(folder / f"{k}.jpg") for k in range(3)]
    for k, image in enumerate(images):
        Path(image).write_bytes(b"photo" * (k + 1))
    made = dict(DescriptorKey("3f2a9c0d1e2b4a5c", 64).record(), network="retrievalSfM120k-vgg16-gem")
    path = write_feature_file(np.eye(512, 3, dtype=np.float32), images, tmp_path / "feats.npy", made)
    vgg16 = Teacher("vgg16", None, [str(path)])
    assert teacher_split_features(vgg16, "set", "train", images, 64, str(path)).shape == (512, 3)
    copy = shutil.copytree(tmp_path / "data", tmp_path / "copy")  # the same images elsewhere: the same
    assert teacher_split_features(vgg16, "set", "train", [str(copy / "train" / "set" / f"{k}.jpg") for k in range(3)],
                                  64, str(path)).shape == (512, 3)
    Path(images[1]).write_bytes(b"another photo")
    with pytest.raises(DataError, match=r"feats.npy describes the split's images as they were when it was written: "
                                        r"some changed since"):
        teacher_split_features(vgg16, "set", "train", images, 64, str(path))
    moved = [image.replace(str(tmp_path / "data"), str(tmp_path / "copy")) for image in images]
    assert teacher_split_features(vgg16, "set", "train", moved, 64, str(path)).shape == (512, 3)  # the copy: intact
    shutil.rmtree(tmp_path / "data")  # moved away, then one generated again where the run reads it
    Path(moved[0]).write_bytes(b"generated again")
    with pytest.raises(DataError, match=r"feats.npy describes the split's images as they were"):
        teacher_split_features(vgg16, "set", "train", moved, 64, str(path))

    multi = dict(DescriptorKey("3f2a9c0d1e2b4a5c", 64, (1, 0.5), 3.0).record(), network="retrievalSfM120k-vgg16-gem")
    write_feature_file(np.eye(512, 3, dtype=np.float32), moved, tmp_path / "multi.npy", multi)
    with caplog.at_level("WARNING", logger="aml.training.teacher"):
        teacher_split_features(vgg16, "set", "train", moved, 64, str(tmp_path / "multi.npy"))
    assert "multi.npy was encoded at scales [1.0, 0.5], the teacher descriptors of a run at one" in caplog.text

    other = dict(DescriptorKey("0123456789abcdef", 64).record(), network="retrievalSfM120k-vgg16-gem")
    val = write_feature_file(np.eye(512, 2, dtype=np.float32), moved[:2], tmp_path / "val.npy", other)
    two = Teacher("vgg16", None, [str(path), str(val)])
    with pytest.raises(DataError, match=r"feature files .*feats.npy and .*val.npy were encoded by other weights "
                                        r"\(fingerprints 3f2a9c0d and 01234567\)"):
        teacher_split_features(two, "set", "val", moved[:2], 64, str(val))


def test_a_feat_path_file_is_checked_against_a_checkpoint_teachers_weights_not_its_name(teacher, tmp_path):
    """By name alone: a copy of the teacher under another name was refused, and another run's
    checkpoint of the same file name (other weights) trained the student without a word."""
    from aml.descriptors import DescriptorKey, write_feature_file
    from aml.utils.errors import DataError

    images = [str(tmp_path / f"{k}.jpg") for k in range(3)]
    made = dict(DescriptorKey(teacher.loaded.fingerprint, 64).record(), network="model_best")
    path = write_feature_file(np.eye(512, 3, dtype=np.float32), images, tmp_path / "feats.npy", made)
    copy = tmp_path / "copy" / "teacher-v1.pth.tar"
    copy.parent.mkdir()
    shutil.copyfile(teacher.spec.path, copy)
    assert teacher_split_features(Teacher(str(copy)), "set", "train", images, 64, str(path)).shape == (512, 3)
    torch.manual_seed(7)
    other = save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0),
                            tmp_path / "other" / "model_best.pth.tar")
    with pytest.raises(DataError, match=rf"feats.npy was encoded by other weights than --teacher {other}'s"):
        teacher_split_features(Teacher(str(other)), "set", "train", images, 64, str(path))
