"""The teacher of a training run and its descriptors of the training images: read from
--feat-path, or extracted once with the teacher network and cached in <data_root>/features/."""

import functools
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from aml.data.paths import DataRootLike, data_subdir
from aml.descriptors import (
    DEFAULT_EXTRACTION,
    DescriptorKey,
    ExtractionConfig,
    changed_since_written,
    describe_images,
    feature_file_beside,
    feature_file_name,
    feature_provenance,
    load_feature_file,
    reusable_feature_file,
    settings_not_its_own,
    write_feature_file,
)
from aml.networks.loading import LoadedNetwork, NetworkSpec, load_spec
from aml.utils.atomic import optional_write
from aml.utils.distributed import current_world, found_by_all, warn_once
from aml.utils.errors import DataError

log = logging.getLogger(__name__)


class Teacher:
    """'vgg16' | 'resnet101' (published) or a checkpoint path, loaded once, on first use, and
    shared by every split and test of the run (``--feat-path`` runs load it only to validate or
    test with it, or, a checkpoint file, to check the files' recorded fingerprint against its
    weights; then the weights must be those the ``feature_files`` were encoded by)."""

    def __init__(self, spec: str, data_root: DataRootLike = None, feature_files: Sequence[str] = ()):
        self.spec, self.data_root, self.feature_files = NetworkSpec.parse(spec), data_root, feature_files

    def check_same_weights(self, path: Path, fingerprint: Optional[str]) -> None:
        """Refuse a feature file encoded by other weights than another of the run's files
        (``--feat-path`` and ``--feat-val-path`` of two teachers of one name), where both
        record theirs: the teacher need not be loaded to tell."""
        for other in self.feature_files:
            theirs = feature_provenance(Path(other)).fingerprint
            if fingerprint is not None and theirs is not None and theirs != fingerprint:
                raise DataError(
                    f"feature files {other} and {path} were encoded by other weights (fingerprints {theirs[:8]} "
                    f"and {fingerprint[:8]}): training and validation would measure two teachers' spaces; extract "
                    "both with the --teacher of the run"
                )

    @functools.cached_property
    def loaded(self) -> LoadedNetwork:
        loaded = load_spec(self.spec, None, self.data_root)
        for path in self.feature_files:
            recorded = feature_provenance(Path(path)).fingerprint
            if recorded is not None:
                _check_fingerprint(Path(path), recorded, self.spec.given, loaded.fingerprint)
        return loaded

    def check_encoded_by(self, path: Path, fingerprint: str) -> None:
        """Refuse a feature file encoded by other weights than the teacher's (which this loads).

        Args:
            path: the feature file.
            fingerprint: the network fingerprint it records.

        Raises:
            DataError: naming the file and both fingerprints.
        """
        _check_fingerprint(path, fingerprint, self.spec.given, self.loaded.fingerprint)


def _check_fingerprint(path: Path, recorded: str, teacher: str, fingerprint: str) -> None:
    if recorded != fingerprint:
        raise DataError(
            f"feature file {path} was encoded by other weights than --teacher {teacher}'s "
            f"(fingerprints {recorded[:8]} and {fingerprint[:8]}): its descriptors and the "
            "teacher's would be two spaces; give the --teacher it was extracted with, or extract it again "
            "with extract_features.py"
        )


def _given_features(teacher: Teacher, path: Path, images: Sequence[str], image_size: int) -> np.ndarray:
    """A ``--feat-path`` file's descriptors: of the teacher's dimension (as far as it is known
    without loading it), and, where its image list and settings say, of these images (column
    j: image j of the split) encoded by this teacher; encoded at another image size than the
    run's, with a warning.

    Raises:
        DataError: naming the file, the first column of another image, or the other network.
    """
    if settings_not_its_own(path):  # its checks would read "nothing recorded" and take stale descriptors
        raise DataError(
            f"feature file {path} is incomplete: its settings ({path}.json) are not those of the .npy and image "
            "list beside it (a write was interrupted, or one of them was replaced since); extract it again with "
            "extract_features.py"
        )
    vecs = load_feature_file(path, len(images), teacher.spec.dimension())
    made = feature_provenance(path)
    column = made.other_images(images)
    if column is not None and made.images is not None:
        listed = made.images[column] if column < len(made.images) else "nothing"
        wanted = images[column] if column < len(images) else "nothing"
        raise DataError(
            f"feature file {path} describes other images than the training split's: its column {column} is "
            f"{listed}, the split's image {column} is {wanted}; extract it for this set with extract_features.py"
        )
    if changed_since_written(path, images):
        raise DataError(
            f"feature file {path} describes the split's images as they were when it was written: some changed since "
            "(their sizes or modification times differ: a set generated again or edited); extract it again with "
            "extract_features.py"
        )
    if made.fingerprint is not None and teacher.spec.local_file is not None:
        # a checkpoint file at hand: its weights settle it (a copy under another name is the
        # teacher; another run's checkpoint of the same name is not)
        teacher.check_encoded_by(path, made.fingerprint)
    elif made.network is not None and made.network != teacher.spec.name:
        raise DataError(
            f"feature file {path} was encoded by {made.network}, not by --teacher {teacher.spec.given} "
            f"({teacher.spec.name}); give the --teacher it was extracted with, or its file"
        )
    teacher.check_same_weights(path, made.fingerprint)
    if made.scales is not None and tuple(made.scales) != (1,):
        warn_once(
            log,
            ">> feature file %s was encoded at scales %s, the teacher descriptors of a run at one: the student "
            "learns multi-scale descriptors from single-scale images (extract_features.py without -ms encodes "
            "them as a run does)",
            path,
            list(made.scales),
        )
    if made.image_size is not None and made.image_size != image_size:
        warn_once(
            log,
            ">> feature file %s was encoded at image size %g, this run trains at --image-size %d: the student "
            "learns the teacher's descriptors of other pixels (extract_features.py -imsize %d encodes them at "
            "the run's)",
            path,
            made.image_size,
            image_size,
            image_size,
        )
    return vecs


def teacher_split_features(
    teacher: Teacher,
    dataset: str,
    split: str,
    images: Sequence[str],
    image_size: int,
    feat_path: Optional[str] = None,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
) -> torch.Tensor:
    """D x N teacher descriptors of one split's ``images`` (db order).

    With ``feat_path`` the file is read and checked (the teacher is not loaded): its shape,
    and, as far as the files beside it say, its images and its network (`_given_features`).
    Otherwise the teacher encodes the images at ``image_size``; the result is kept as
    ``<dataset>[-val]_<teacher>_imsize<N>.npy`` and reused while its `DescriptorKey`
    (the teacher's weights, the image size, ``config``'s pixel path) is this one. Freshly
    encoded descriptors are returned as they are, not read back from the file.
    """
    if feat_path:
        return torch.from_numpy(_given_features(teacher, Path(feat_path), images, image_size))
    loaded = teacher.loaded
    wanted = DescriptorKey.of(loaded.net, image_size, (1,), config, loaded.fingerprint)
    usual = data_subdir(teacher.data_root, "features") / feature_file_name(
        dataset, loaded.feature_name, split, image_size
    )
    path = feature_file_beside(usual, wanted)
    cached = reusable_feature_file(path, wanted, images)
    cached = found_by_all(cached, config.collective)
    if cached is not None:
        return torch.from_numpy(cached)
    log.info(">> extracting teacher descriptors of %s (%s) with %s", dataset, split, loaded.name)
    vecs = describe_images(loaded.net, images, image_size, config=config.but(desc=f"{dataset} {split}"))
    if current_world().is_main:  # every rank has the descriptors (the extraction is collective); one writes them
        with optional_write(f"{path.name}: the teacher descriptors' cache"):  # a read-only data root trains on
            write_feature_file(vecs, images, usual, dict(wanted.record(), network=loaded.name), key=wanted)
    return torch.from_numpy(vecs)
