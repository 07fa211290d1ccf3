"""Feature files: the D x N descriptors of a data set (test-set database or training split)
with their image list and settings, what ``main.py --feat-path`` reads and
``extract_features.py`` writes."""

import hashlib
import json
import os
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.data.paths import DataRootLike, below_common_folder, data_subdir
from aml.data.testsets import configdataset, prepare_test_set, query_and_database_paths
from aml.data.trainsets import is_training_set, load_training_db
from aml.descriptors.extraction import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.key import DescriptorKey, images_digest, images_digest_as_listed
from aml.descriptors.store import MANIFEST, StoreKey, encode_into_store, open_store, read_manifest, warn_of_skipped
from aml.networks.checkpoint import OUTPUT_DIM
from aml.networks.loading import LoadedNetwork
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.utils.atomic import InTheWay, atomic_write, file_stamp, lock_beside
from aml.utils.distributed import current_world, from_main, warn_once
from aml.utils.errors import ConfigError, DataError, MissingFile
from aml.utils.text_files import TooLarge, line_list, read_bounded, read_line_list
from aml.utils.plain_files import file_format, load_npy

log = logging.getLogger(__name__)
UNIT_NORM_TOLERANCE = 1e-2  # |norm - 1| of a column read as L2-normalised (float16 storage rounds to 1e-3)
#: the dtypes a feature file's descriptors may have (float16: a store's shards)
DESCRIPTOR_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda out: np.save(out, array))


def _listing_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npy")] + "_img_list.txt")


def _settings_path(path: Path) -> Path:
    return Path(str(path) + ".json")


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def write_feature_file(
    vecs: np.ndarray,
    images: Sequence[str],
    path: Path,
    settings: Optional[Dict[str, Any]] = None,
    key: Optional["DescriptorKey"] = None,
) -> Path:
    """Save D x N features with their image list and how they were made.

    The features go to ``path`` (.npy), the image list next to it (``_img_list.txt``) and the
    settings to ``path`` + '.json' (network, image size, ...). The three files form one unit:
    the settings file is replaced first by a mark that the file is being written
    (`invalidate_feature_file`) and written last, with the array's byte size and the list's
    hash, so that a reader that finds settings matching the files knows all three
    come from the same write (each file is itself written atomically).

    Args:
        vecs: the D x N descriptors (saved as float32).
        images: the N image paths, in column order.
        path: the ``.npy`` file.
        settings: how the features were made (e.g. `DescriptorKey.record` and the
            network's name).
        key: the features' key: ``path`` is then their usual name, and they go beside a file
            of other settings there (`feature_file_beside`), chosen under the lock that two
            runs writing that name take turns with.

    Returns:
        The file written: ``path``, or the name beside it.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import write_feature_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_feature_file(np.zeros((4, 2)), ["a.jpg", "b.jpg"], pathlib.Path(folder) / "db.npy",
        ...                               {"network": "vgg16"})
        ...     sorted(file.name for file in path.parent.iterdir())
        ['db.npy', 'db.npy.json', 'db_img_list.txt']
    """
    path = Path(path)
    with lock_beside(path):  # two runs writing one feature file take turns: no settings beside the other's array
        if key is not None:  # chosen now: another run may have written other settings there meanwhile
            path = feature_file_beside(path, key)
        sidecar = invalidate_feature_file(path)
        _atomic_save(path, np.ascontiguousarray(vecs, dtype=np.float32))
        listing = line_list(images)
        atomic_write(_listing_path(path), lambda out: out.write(listing))
        record = dict(
            settings or {},
            columns=int(vecs.shape[1]),
            npy_bytes=path.stat().st_size,
            images_sha1=_sha1(listing),
            images_key=images_digest(images),  # their sizes and times: a set made again under the same names differs
        )
        atomic_write(sidecar, lambda out: out.write(json.dumps(record, sort_keys=True).encode()))
    return path


#: the settings file of a feature file being written: a write it interrupts leaves it, which
#: readers tell from the settings-less files of the original's extract_features.py
BEING_WRITTEN = b'{"incomplete": "a write of this feature file was interrupted: extract it again"}'


def invalidate_feature_file(path: Path) -> Path:
    """Mark the feature file ``path`` as being written (its settings file says so), so that
    readers see it as incomplete until it is written whole again; returns the settings file's
    path."""
    sidecar = _settings_path(Path(path))
    if sidecar.is_dir():  # checked before the .npy is replaced: no features go without their settings
        raise InTheWay(f"{sidecar} is a folder where aml writes {Path(path).name}'s settings: move it away")
    atomic_write(sidecar, lambda out: out.write(BEING_WRITTEN))
    return sidecar


def settings_not_its_own(path: Path) -> bool:
    """Whether the settings beside the feature file ``path`` disown it.

    They do when a write was interrupted (`invalidate_feature_file`), or when the array or the
    image list they record the size and hash of was replaced since. A file without settings,
    as the original's code writes them, or with the settings of aml's first release, which
    recorded neither, has none to disown it.

    Args:
        path: the feature file (``.npy``).

    Returns:
        True when its settings file is there and `feature_file_settings` disowns it.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors.files import settings_not_its_own, write_feature_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_feature_file(np.zeros((4, 2)), ["a.jpg", "b.jpg"], pathlib.Path(folder) / "db.npy")
        ...     whole = settings_not_its_own(path)
        ...     np.save(path, np.zeros((4, 3), dtype=np.float32))  # replaced since
        ...     whole, settings_not_its_own(path)
        (False, True)
    """
    sidecar = _settings_path(Path(path))
    if not sidecar.is_file() or feature_file_settings(path) is not None:
        return False
    try:
        record = json.loads(read_bounded(sidecar))
    except (TooLarge, ValueError):
        return True  # not settings aml writes: nothing says these files are whole
    return not isinstance(record, dict) or bool({"incomplete", "npy_bytes", "images_sha1"} & set(record))


def feature_file_settings(path: Path) -> Optional[Dict[str, Any]]:
    """The settings written next to a feature file.

    Args:
        path: the feature file (``.npy``).

    Returns:
        The settings, with ``columns``, ``npy_bytes`` and ``images_sha1``; None when they are
        missing or do not belong to the ``.npy`` and image list beside them (an interrupted
        or partial write).

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import feature_file_settings, write_feature_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_feature_file(np.zeros((4, 2)), ["a.jpg", "b.jpg"], pathlib.Path(folder) / "db.npy",
        ...                               {"network": "vgg16"})
        ...     settings = feature_file_settings(path)
        >>> settings["network"], settings["columns"]
        ('vgg16', 2)
    """
    path = Path(path)
    sidecar, listing = _settings_path(path), _listing_path(path)
    if not (sidecar.is_file() and path.is_file() and listing.is_file()):
        return None
    try:
        settings = json.loads(read_bounded(sidecar))
    except (TooLarge, ValueError):  # not the settings aml writes
        return None
    if not isinstance(settings, dict):
        return None
    listed = _sha1(listing.read_bytes())
    if settings.get("npy_bytes") != path.stat().st_size or settings.get("images_sha1") != listed:
        return None
    return settings


def feature_file_name(dataset: str, network: str, split: Optional[str] = None, image_size: Optional[int] = None) -> str:
    """The file name of a data set's features: ``<dataset>[-val]_<network>[_imsize<N>].npy``.

    The train split, and test sets, carry no split suffix; the image size is part of the
    name so that files of several sizes live side by side.

    Args:
        dataset: the data set.
        network: the network's name.
        split: ``"val"`` adds ``-val``; ``"train"`` and None add nothing.
        image_size: the image size, when the name carries it.

    Returns:
        The file name.

    Examples:
        >>> from aml.descriptors import feature_file_name
        >>> feature_file_name("retrieval-SfM-120k", "retrievalSfM120k-vgg16-gem", "val", 1024)
        'retrieval-SfM-120k-val_retrievalSfM120k-vgg16-gem_imsize1024.npy'
        >>> feature_file_name("roxford5k", "model_best")
        'roxford5k_model_best.npy'
    """
    suffix = "-val" if split == "val" else ""
    size = f"_imsize{image_size}" if image_size is not None else ""
    return f"{dataset}{suffix}_{network}{size}.npy"


def load_feature_file(path: Path, expected_columns: int, expected_dim: Optional[int] = None) -> np.ndarray:
    """Read a D x N teacher feature file and check its shape against the data set.

    Args:
        path: a ``.npy`` feature file, or a descriptor store folder (written by
            ``extract_features.py --shard-size``).
        expected_columns: the split's number of images (one column each, in db order).
        expected_dim: the descriptors' dimension (the teacher's, the student's), when it must match.

    Returns:
        The D x N descriptors as float32.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for an unreadable file, an incomplete store, another shape than
            expected, or NaN or infinite values.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import load_feature_file, write_feature_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_feature_file(np.ones((512, 3)), ["a.jpg", "b.jpg", "c.jpg"],
        ...                               pathlib.Path(folder) / "train.npy")
        ...     load_feature_file(path, expected_columns=3, expected_dim=512).shape
        (512, 3)
    """
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        vecs = _load_store(path)
    elif path.is_dir():
        raise DataError(f"feature file {path} is a folder without a store's {MANIFEST}; give the .npy file")
    elif not path.is_file():
        raise MissingFile(f"feature file {path} does not exist; create it with extract_features.py")
    else:
        vecs = _feature_npy(path)
    if vecs.dtype not in DESCRIPTOR_DTYPES:  # float128 too: no einsum or torch tensor of it
        raise DataError(
            f"feature file {path} holds {vecs.dtype} values, not float16, float32 or float64 descriptors; extract it "
            "again"
        )
    if vecs.ndim != 2 or vecs.shape[1] != expected_columns or OUTPUT_DIM.problem(vecs.shape[0]):
        raise DataError(
            f"feature file {path} has shape {vecs.shape}, expected D x {expected_columns} "
            f"(one column per image of the split, in db order; D {OUTPUT_DIM.what})"
        )
    if not np.isfinite(vecs).all():
        bad = np.unique(np.nonzero(~np.isfinite(vecs))[1])
        raise DataError(
            f"feature file {path} holds NaN or infinite values in {bad.size} of {vecs.shape[1]} columns "
            f"(first: column {bad[0]}); extract it again with extract_features.py"
        )
    zero = np.flatnonzero(~np.any(vecs, axis=0))
    if zero.size:
        raise DataError(
            f"feature file {path} holds {zero.size} all-zero columns of {vecs.shape[1]} (first: column {zero[0]}): "
            "a descriptor is never zero (they are L2-normalised); extract it again with extract_features.py"
        )
    if expected_dim is not None and vecs.shape[0] != expected_dim:
        raise DataError(
            f"feature file {path} holds {vecs.shape[0]}-d descriptors but {expected_dim}-d are expected "
            "(the teacher's and the student's); use the --teacher it was extracted with"
        )
    _warn_of_unnormalised(path, vecs)
    return vecs.astype(np.float32, copy=False)


def _feature_npy(path: Path) -> np.ndarray:
    """The array of a feature file's ``.npy``, or a DataError naming what the file is instead."""
    try:
        return load_npy(path)
    except (ValueError, OSError, EOFError) as err:
        other = file_format(path)
        if other is not None and "numpy" not in other:
            raise DataError(
                f"feature file {path} is {other}, not a .npy array; give the file extract_features.py wrote"
            ) from err
        raise DataError(f"feature file {path} is not a readable .npy array ({err}); extract it again") from err


def _warn_of_unnormalised(path: Path, vecs: np.ndarray) -> None:
    """Warn of columns that are not L2-normalised (beyond float16's rounding): the student's
    descriptors are, so a loss that compares the two can never reach them."""
    norms = np.sqrt(np.einsum("ij,ij->j", vecs, vecs, dtype=np.float64))  # no copy of the matrix
    off = np.flatnonzero(np.abs(norms - 1) > UNIT_NORM_TOLERANCE)
    if off.size:
        warn_once(
            log,
            ">> feature file %s: %d of %d columns are not L2-normalised (norms %.3g to %.3g; first: column %d), "
            "but the student's descriptors are, so the losses that compare the two cannot reach them; "
            "L2-normalise each column, or extract the file with extract_features.py",
            path,
            off.size,
            vecs.shape[1],
            norms[off].min(),
            norms[off].max(),
            off[0],
        )


def _load_store(folder: Path) -> np.ndarray:
    store = open_store(folder)
    if not store.complete():
        raise DataError(
            f"descriptor store {folder} lacks {len(store.missing())} of {store.shards} shards (an "
            "interrupted extract_features.py): run the same command again to encode them"
        )
    return store.load()


def dataset_images(dataset: str, split: str, data_root: DataRootLike) -> List[str]:
    """Image paths of a training split or of a test set's database.

    Args:
        dataset: a training set (``"retrieval-SfM-120k"``, ...) or a test set (``"roxford5k"``,
            ...); a test set is prepared first (downloaded or generated).
        split: ``"train"`` or ``"val"`` of a training set (a test set has one database).
        data_root: where the data sets are.

    Returns:
        The paths, in db order.

    Examples:
        >>> from aml.descriptors import dataset_images
        >>> images = dataset_images("roxford5k", "test", "data")  # doctest: +SKIP
        >>> len(images)  # doctest: +SKIP
        4993
    """
    if is_training_set(dataset, data_root):
        return list(load_training_db(dataset, split, data_root)["images"])
    prepare_test_set(dataset, data_root)
    return query_and_database_paths(configdataset(dataset, data_subdir(data_root, "test")))[0]


def _into_store(
    net: ImageRetrievalNet, images: List[str], folder: Path, key: StoreKey, config: ExtractionConfig
) -> Path:
    """``images`` encoded into the descriptor store ``folder`` (`encode_into_store`), its
    progress shown by the main process only (``config.desc`` names the set); returns the folder."""
    shards = config.but(progress=config.progress and current_world().is_main, desc=f"{config.desc} shard")
    store = encode_into_store(net, images, folder, key, shards)
    warn_of_skipped(store)
    log.info(">> %s: %d x %d descriptors in %d shards in %s", config.desc, store.dim, store.count, store.shards, folder)
    return folder


def extract_dataset_features(
    network: LoadedNetwork,
    dataset: str,
    split: str,
    key: DescriptorKey,
    data_root: DataRootLike = None,
    output: Optional[Path] = None,
    shard_size: Optional[int] = None,
    store_dtype: str = "float32",
    config: ExtractionConfig = DEFAULT_EXTRACTION,
) -> Path:
    """Encode a data set (split) with a network and write its feature file.

    The file is ``<data_root>/features/<name>.npy`` (`feature_file_name` of the network's
    ``feature_name``: a checkpoint's carries its weights' fingerprint) with the key
    in its settings. With ``shard_size`` the descriptors go to a resumable descriptor store,
    the folder ``<name>.store`` (float32 or float16), which ``--feat-path`` reads as well.

    Args:
        network: the network and its name.
        dataset: a training set or a test set.
        split: ``"train"`` or ``"val"`` of a training set.
        key: how to encode: image size, scales, msp, and the pixel path ``config`` gives
            (`ExtractionConfig.pixel_path`: refused when another).
        data_root: where the data sets and features are.
        output: the file to write instead of the default one (a store replaces its suffix
            by ``.store``).
        shard_size: images per shard of a descriptor store; None: one ``.npy`` file.
        store_dtype: the store's dtype, ``"float32"`` or ``"float16"`` (only with ``shard_size``).
        config: how to extract (`ExtractionConfig`).

    Returns:
        The feature file, or the store folder.

    Examples:
        >>> from aml.descriptors import DescriptorKey, extract_dataset_features
        >>> from aml.networks import load_named_or_file
        >>> teacher = load_named_or_file("retrievalSfM120k-vgg16-gem")  # doctest: +SKIP
        >>> key = DescriptorKey.of(teacher.net, 1024, fingerprint=teacher.fingerprint)  # doctest: +SKIP
        >>> extract_dataset_features(teacher, "retrieval-SfM-120k", "train", key)  # doctest: +SKIP
        PosixPath('data/features/retrieval-SfM-120k_retrievalSfM120k-vgg16-gem_imsize1024.npy')
    """
    if store_dtype != "float32" and not shard_size:  # a .npy feature file is float32 whatever it was asked
        raise ConfigError(f"store_dtype={store_dtype!r} sets a descriptor store's dtype: give shard_size too")
    key.check_pixels(config, network.net)
    images = dataset_images(dataset, split, data_root)
    is_train_set = is_training_set(dataset, data_root)
    named = data_subdir(data_root, "features") / feature_file_name(
        dataset, network.feature_name, split if is_train_set else None, key.image_size
    )
    path = output or (named if shard_size else feature_file_beside(named, key))  # a file of other settings stays
    log.info(">> %s (%s): extracting %d images with %s...", dataset, split, len(images), network.name)
    if shard_size:
        store_key = StoreKey(key, network.name, store_dtype, shard_size)
        folder = path.with_suffix(".store") if output else store_beside(named.with_suffix(".store"), store_key)
        return _into_store(network.net, images, folder, store_key, config.but(desc=f"{dataset} {split}"))
    # the network's own multi-scale power, as the queries get it (the key's is rounded)
    vecs = describe_images(
        network.net, images, key.image_size, key.scales, config=config.but(desc=f"{dataset} {split}")
    )
    world = current_world()
    if world.is_main:  # a file of other settings, even one written meanwhile by another run, stays
        settings = dict(key.record(), network=network.name)
        path = write_feature_file(vecs, images, output or named, settings, key=None if output else key)
    path = from_main(path, world)  # the other ranks read it next
    log.info(">> %s: %s x %s descriptors written to %s", dataset, vecs.shape[0], vecs.shape[1], path)
    return path


def feature_file_beside(path: Path, key: DescriptorKey) -> Path:
    """Where descriptors of ``key`` go: ``path``, or beside it when it holds other settings'.

    A file of other settings under the same name (another ``-ms``, ``--no-amp``, other teacher
    weights) stays; ``key``'s file goes beside it, its name ending in the key's digest.

    Args:
        path: the feature file's usual name.
        key: how the descriptors to write are encoded.

    Returns:
        ``path``, or the name beside it.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import DescriptorKey, feature_file_beside, write_feature_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_feature_file(np.zeros((4, 1)), ["a.jpg"], pathlib.Path(folder) / "db.npy",
        ...                               DescriptorKey("3f2a9c0d1e2b4a5c", 64, (1, 0.5), 3.0).record())
        ...     feature_file_beside(path, DescriptorKey("3f2a9c0d1e2b4a5c", 64)).name != "db.npy"
        True
    """
    found = feature_file_key(path) if path.is_file() else None
    if found is None or found == key:
        return path
    return path.with_name(f"{path.stem}_{key.digest([])[:8]}{path.suffix}")


def store_beside(folder: Path, key: StoreKey) -> Path:
    """Where a descriptor store of ``key`` goes: ``folder``, or beside it when that holds another key's store.

    As `feature_file_beside`: a store of other settings under the same name (another ``-ms``,
    ``--no-amp``, ``--store-dtype``, ``--shard-size``) stays, and ``key``'s goes beside it, its
    name ending in the key's tag (`aml.descriptors.store.StoreKey.tag`); the same settings again
    resume it. A folder of no readable manifest, or of these settings and other images (a data
    set that changed), is left to `aml.descriptors.store.DescriptorStore.create`, which names
    what is wrong with it.

    Args:
        folder: the store's usual name.
        key: what the store to write holds.

    Returns:
        ``folder``, or the name beside it.
    """
    try:
        _, found = read_manifest(folder)
    except (FileNotFoundError, NotADirectoryError, DataError):
        return folder
    if found == key:
        return folder
    return folder.with_name(f"{folder.stem}_{key.tag()}{folder.suffix}")


def feature_file_key(path: Path) -> Optional[DescriptorKey]:
    """The `DescriptorKey` a feature file was written under.

    Args:
        path: the feature file (``.npy``).

    Returns:
        The key, or None when the file has no whole settings or they hold no valid key.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import DescriptorKey, feature_file_key, write_feature_file
        >>> key = DescriptorKey("3f2a9c0d1e2b4a5c", 1024)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_feature_file(np.zeros((4, 2)), ["a.jpg", "b.jpg"], pathlib.Path(folder) / "db.npy",
        ...                               dict(key.record(), network="vgg16"))
        ...     feature_file_key(path) == key
        True
    """
    settings = feature_file_settings(path)
    try:
        return DescriptorKey.from_record(settings, str(path)) if settings is not None else None
    except DataError:  # edited or damaged settings: no key, so the file is written again
        return None


@dataclass(frozen=True)
class FeatureProvenance:
    """What a feature file (or a descriptor store) says of how it was made; None where it
    does not say (a file of the original's code, or written by hand).

    Attributes:
        images: its images, in column order (the ``_img_list.txt`` beside it, a store's
            ``images.txt``).
        network: the name of the network that encoded them.
        fingerprint: that network's weights' fingerprint.
        image_size: the size the images were resized to before encoding.
        scales: the scales they were encoded at (multi-scale: several).
    """

    images: Optional[List[str]] = None
    network: Optional[str] = None
    fingerprint: Optional[str] = None
    image_size: Optional[float] = None
    scales: Optional[Tuple[float, ...]] = None

    def other_images(self, images: Sequence[str]) -> Optional[int]:
        """The first column whose image is not ``images``' (compared below each list's common
        folder, so that a data root moved elsewhere still matches), or None.

        Examples:
            >>> from aml.descriptors.files import FeatureProvenance
            >>> made = FeatureProvenance(images=["/a/data/x/1.jpg", "/a/data/x/2.jpg"])
            >>> made.other_images(["/b/data/x/1.jpg", "/b/data/x/2.jpg"]), made.other_images(["/b/2.jpg", "/b/1.jpg"])
            (None, 0)
        """
        if self.images is None:
            return None
        listed, wanted = below_common_folder(self.images), below_common_folder(images)
        for column, (a, b) in enumerate(zip(listed, wanted, strict=False)):
            if a != b:
                return column
        return None if len(listed) == len(wanted) else min(len(listed), len(wanted))


def feature_provenance(path: Path) -> FeatureProvenance:
    """What a feature file says of how it was made (`FeatureProvenance`).

    Args:
        path: a ``.npy`` feature file (its image list beside it, the network's name and
            fingerprint from its whole settings) or a descriptor store folder.

    Returns:
        What it says; None in the fields it does not.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import DescriptorKey, feature_provenance, write_feature_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_feature_file(np.zeros((4, 1)), ["a.jpg"], pathlib.Path(folder) / "db.npy",
        ...                               dict(DescriptorKey("3f2a9c0d1e2b4a5c", 64).record(), network="vgg16"))
        ...     made = feature_provenance(path)
        >>> made.images, made.network, made.fingerprint, made.image_size, made.scales
        (['a.jpg'], 'vgg16', '3f2a9c0d1e2b4a5c', 64, (1.0,))
    """
    path = Path(path)
    if path.is_dir():
        store = open_store(path, warn=False)  # read, and warned of, as the descriptors were
        made = store.key.descriptors
        return FeatureProvenance(
            list(store.images), store.key.network, made.fingerprint, made.image_size, tuple(made.scales)
        )
    listing = _listing_path(path)
    images = read_line_list(listing.read_bytes()) if listing.is_file() else None
    settings = feature_file_settings(path) or {}
    network, fingerprint, size = settings.get("network"), settings.get("fingerprint"), settings.get("image_size")
    key = feature_file_key(path)
    return FeatureProvenance(
        images,
        network if isinstance(network, str) else None,
        fingerprint if isinstance(fingerprint, str) else None,
        size if isinstance(size, (int, float)) and not isinstance(size, bool) else None,
        tuple(key.scales) if key is not None else None,
    )


def changed_since_written(path: Path, images: Sequence[str]) -> bool:
    """Whether ``images``, which a feature file (or store) lists, changed since it was written.

    Their sizes or modification times now differ from those it recorded, under the names it
    lists (so that the same images below another folder are unchanged).

    Args:
        path: a ``.npy`` feature file or a descriptor store folder that lists ``images``
            (the same names below their common folder, in order: `FeatureProvenance.other_images`).
        images: the images as they are now.

    Returns:
        True where they changed; False where they did not, or where the file recorded nothing
        to tell (written before aml recorded it).

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import changed_since_written, write_feature_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     image = pathlib.Path(folder) / "a.jpg"
        ...     _ = image.write_bytes(b"a photo")
        ...     path = write_feature_file(np.ones((4, 1)), [str(image)], pathlib.Path(folder) / "db.npy")
        ...     before = changed_since_written(path, [str(image)])
        ...     _ = image.write_bytes(b"another photo")
        ...     before, changed_since_written(path, [str(image)])
        (False, True)
    """
    path, images = Path(path), list(images)
    if not all(os.path.isfile(image) for image in images):
        return False  # missing images: each has its own message
    if path.is_dir():
        store = open_store(path, warn=False)
        if store.images != images:  # moved: the store's names, the images where they are now
            store.listed, store.images = store.images, images
        return bool(store.stale_shards())
    listing = _listing_path(path)
    recorded = (feature_file_settings(path) or {}).get("images_key")
    if not isinstance(recorded, str) or not listing.is_file():
        return False
    listed = read_line_list(listing.read_bytes())
    return len(listed) == len(images) and images_digest_as_listed(images, listed) != recorded


def reusable_feature_file(path: Path, key: DescriptorKey, images: Sequence[str]) -> Optional[np.ndarray]:
    """The descriptors of ``path`` when it holds ``images`` encoded as ``key`` says, else None.

    Its key must be ``key``, and the images (their paths, sizes and times) those it was made
    from: a training set generated again under the same names (``--overwrite``), or edited,
    is encoded again. Files written before aml recorded the images pass on the key alone.

    Args:
        path: the feature file (``.npy``).
        key: how the descriptors must have been made.
        images: the images they must describe, in column order.

    Returns:
        The D x N descriptors, or None.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from aml.descriptors import DescriptorKey, reusable_feature_file, write_feature_file
        >>> key = DescriptorKey("3f2a9c0d1e2b4a5c", 1024)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     image = pathlib.Path(folder) / "a.jpg"
        ...     _ = image.write_bytes(b"a photo")
        ...     path = write_feature_file(np.ones((4, 1)), [str(image)], pathlib.Path(folder) / "db.npy",
        ...                               dict(key.record(), network="vgg16"))
        ...     kept = reusable_feature_file(path, key, [str(image)]).shape
        ...     _ = image.write_bytes(b"another photo")
        ...     kept, reusable_feature_file(path, key, [str(image)])
        ((4, 1), None)
    """
    if not path.is_file():
        return None
    before = file_stamp(path)  # the array the settings below describe
    if feature_file_key(path) != key:
        return None
    recorded = (feature_file_settings(path) or {}).get("images_key")
    if recorded is not None and recorded != images_digest(images):
        log.info(">> %s describes other images (changed since): encoding them again", path)
        return None
    vecs = load_feature_file(path, len(images))
    if file_stamp(path) != before:  # another run wrote it meanwhile: what was read may be its array
        log.info(">> %s was written again while it was read: encoding its images again", path)
        return None
    return vecs
