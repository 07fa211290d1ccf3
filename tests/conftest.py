"""Shared fixtures: a small synthetic data root generated once per test session."""

import logging

import pytest

from aml.data.synthetic import SyntheticTestConfig, SyntheticTrainConfig, generate_test_set, generate_train_set

SMALL_TRAIN = SyntheticTrainConfig(train_landmarks=16, val_landmarks=4, views=8, pairs_per_landmark=4, image_size=96)
SMALL_TEST = SyntheticTestConfig(landmarks=15, queries_per_landmark=2, easy=4, hard=4, junk=1, distractor_landmarks=8,
                        distractor_views=3, image_size=96)


def pytest_configure(config):
    config.addinivalue_line("markers", "learning: asserts a learning outcome (CI runs these under a second CPU ISA too)")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A data root holding small synth-sfm, synth-oxford and synth-paris sets."""
    logging.getLogger("aml").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("data")
    generate_train_set(root, "synth-sfm", SMALL_TRAIN)
    generate_test_set(root, "synth-oxford", SMALL_TEST)
    generate_test_set(root, "synth-paris", SMALL_TEST)
    return root
