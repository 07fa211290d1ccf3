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
    teacher_split_features(teacher, "synth-sfm", "val", images, 48, config=config.but(decode="device"))
    assert encoded == [len(images)] * 2  # another pixel path: another key, encoded again
    np.testing.assert_array_equal(np.load(path), teacher_split_features(teacher, "synth-sfm", "val", images, 48,
                                                                         config=config.but(decode="device")).numpy())
