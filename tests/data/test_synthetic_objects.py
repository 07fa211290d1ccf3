"""The synthetic object family (the offline ImageNet stand-in's images)."""

import numpy as np

from aml.data.synthetic_objects import ObjectConfig, generate_objects

SMALL = ObjectConfig(classes=5, per_class=6, size=32, seed=3)


def test_objects_are_deterministic_balanced_and_sized():
    images, labels = generate_objects(SMALL)
    again, labels_again = generate_objects(SMALL)
    assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert np.bincount(labels).tolist() == [6] * 5
    other, _ = generate_objects(ObjectConfig(classes=5, per_class=6, size=32, seed=4))
    assert not np.array_equal(images, other)


def test_instances_vary_and_classes_differ_more_than_instances():
    images, labels = generate_objects(ObjectConfig(classes=6, per_class=10, size=48, seed=1))
    flat = images.reshape(len(images), -1).astype(np.float32)
    assert len({row.tobytes() for row in images}) == len(images)  # no two instances alike
    # the object (not the background) carries the class: the mean image of a class is
    # closer to its own instances than to another class's instances, on average
    means = np.stack([flat[labels == c].mean(0) for c in range(6)])
    distances = ((flat[:, None, :] - means[None]) ** 2).mean(-1)
    own = distances[np.arange(len(flat)), labels]
    assert (own <= distances.min(1) + 1e-6).mean() > 0.3  # chance is 1/6


def test_tag_names_every_setting():
    assert SMALL.tag() == "c5x6s32r3"
