"""Teacher descriptors of the training images: read from --feat-path, or extracted once
with the teacher network and cached in <data_root>/features/."""

import logging
from pathlib import Path
from typing import Optional

import torch

from aml.data.paths import data_subdir
from aml.features import feature_file_name, feature_file_settings, load_feature_file, network_fingerprint

log = logging.getLogger(__name__)


def teacher_split_features(teacher: str, dataset: str, split: str, columns: int, image_size: int,
                           feat_path: Optional[str] = None, data_root: Optional[str] = None,
                           device: str = "cpu", workers: int = 8) -> torch.Tensor:
    """D x N teacher descriptors of one split (N = ``columns``, db order).

    With ``feat_path`` the file is read and its shape checked. Otherwise the teacher
    ('vgg16' | 'resnet101' | checkpoint path) encodes the split at ``image_size``; the
    result is cached as ``<dataset>[-val]_<teacher>.npy`` (a checkpoint's name gets its
    weights' hash appended) and reused while the teacher's weights and the image size stay
    the same.
    """
    if feat_path:
        return torch.from_numpy(load_feature_file(Path(feat_path), columns))
    from aml.cli.extract_features import extract_dataset_features
    from aml.networks.loading import load_teacher

    net, name = load_teacher(teacher, data_root)
    fingerprint = network_fingerprint(net)
    if Path(teacher).is_file():  # checkpoint names (model_best, model_epochN) repeat across runs
        name = f"{name}-{fingerprint[:8]}"
    path = data_subdir(data_root, "features") / feature_file_name(dataset, name, split)
    wanted = {"fingerprint": fingerprint, "image_size": image_size}
    known = feature_file_settings(path) or {}
    if not path.is_file() or any(known.get(k) != v for k, v in wanted.items()):
        log.info(">> extracting teacher descriptors of %s (%s) with %s", dataset, split, name)
        extract_dataset_features(net, name, dataset, split, image_size, data_root=data_root, output=path,
                                 device=device, workers=workers)
    return torch.from_numpy(load_feature_file(path, columns))
