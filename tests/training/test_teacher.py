"""The teacher's descriptors of a training split: encoded once, kept under their key, reused."""

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
