"""Feature files: the D x N descriptors of a data set (test-set database or training split)
with their image list and settings, what ``main.py --feat-path`` reads and
``extract_features.py`` writes."""

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from aml.data.paths import data_subdir
from aml.data.testsets import configdataset, prepare_test_set, query_and_database_paths
from aml.data.trainsets import is_training_set, load_training_db
from aml.descriptors.extraction import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.key import DescriptorKey
from aml.descriptors.store import StoreKey, encode_into_store, read_store
from aml.networks.loading import LoadedNetwork
from aml.utils.atomic import atomic_write
from aml.utils.distributed import barrier, current_world

log = logging.getLogger(__name__)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda out: np.save(out, array))


def _listing_path(path: Path) -> Path:
    return path.with_name(path.name[:-len(".npy")] + "_img_list.txt")


def _settings_path(path: Path) -> Path:
    return Path(str(path) + ".json")


def _text_sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def write_feature_file(vecs: np.ndarray, images: Sequence[str], path: Path,
                       settings: Optional[Dict[str, Any]] = None) -> Path:
    """Save D x N features as ``path`` (.npy), the image list next to it (_img_list.txt) and
    how they were made (``path`` + '.json': network, image size, ...).

    The three files form one unit: the settings file is removed first and written last,
    with the array's byte size and the list's hash, so that a reader that finds settings
    matching the files knows all three come from the same write (each file is itself
    written atomically)."""
    path = Path(path)
    sidecar = invalidate_feature_file(path)
    _atomic_save(path, np.ascontiguousarray(vecs, dtype=np.float32))
    listing = "".join(f"{image}\n" for image in images)
    atomic_write(_listing_path(path), lambda out: out.write(listing.encode()))
    record = dict(settings or {}, columns=int(vecs.shape[1]), npy_bytes=path.stat().st_size,
                  images_sha1=_text_sha1(listing))
    atomic_write(sidecar, lambda out: out.write(json.dumps(record, sort_keys=True).encode()))
    return path


def invalidate_feature_file(path: Path) -> Path:
    """Remove the settings file of the feature file ``path`` (if any), so that readers see it
    as incomplete until it is written again; returns the settings file's path."""
    sidecar = _settings_path(Path(path))
    sidecar.unlink(missing_ok=True)
    return sidecar


def feature_file_settings(path: Path) -> Optional[Dict[str, Any]]:
    """The settings written next to a feature file, or None when they are missing or do not
    belong to the ``.npy`` and image list beside them (an interrupted or partial write)."""
    path = Path(path)
    sidecar, listing = _settings_path(path), _listing_path(path)
    if not (sidecar.is_file() and path.is_file() and listing.is_file()):
        return None
    try:
        settings = json.loads(sidecar.read_text())
    except ValueError:
        return None
    if settings.get("npy_bytes") != path.stat().st_size or settings.get("images_sha1") != _text_sha1(listing.read_text()):
        return None
    return settings


def feature_file_name(dataset: str, network: str, split: Optional[str] = None, image_size: Optional[int] = None) -> str:
    """``<dataset>[-val]_<network>[_imsize<N>].npy`` (the train split, and test sets, carry
    no split suffix; the image size is part of the name so that files of several sizes
    live side by side)."""
    suffix = "-val" if split == "val" else ""
    size = f"_imsize{image_size}" if image_size is not None else ""
    return f"{dataset}{suffix}_{network}{size}.npy"


def load_feature_file(path: Path, expected_columns: int, expected_dim: Optional[int] = None) -> np.ndarray:
    """Read a D x N teacher feature file (or a descriptor store folder, written by
    ``extract_features.py --shard-size``) and check its shape against the data set."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").is_file():
        vecs = _load_store(path)
    elif not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist; create it with extract_features.py")
    else:
        try:
            vecs = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"feature file {path} is not a readable .npy array ({err}); extract it again") from err
    if vecs.ndim != 2 or vecs.shape[1] != expected_columns:
        raise ValueError(f"feature file {path} has shape {vecs.shape}, expected D x {expected_columns} "
                         "(one column per image of the split, in db order)")
    if not np.isfinite(vecs).all():
        bad = np.unique(np.nonzero(~np.isfinite(vecs))[1])
        raise ValueError(f"feature file {path} holds NaN or infinite values in {bad.size} of {vecs.shape[1]} columns "
                         f"(first: column {bad[0]}); extract it again with extract_features.py")
    if expected_dim is not None and vecs.shape[0] != expected_dim:
        raise ValueError(f"feature file {path} holds {vecs.shape[0]}-d descriptors but the student outputs "
                         f"{expected_dim}-d; use the matching --teacher")
    return vecs.astype(np.float32, copy=False)


def _load_store(folder: Path) -> np.ndarray:
    store = read_store(folder)
    if not store.complete():
        raise ValueError(f"descriptor store {folder} lacks {len(store.missing())} of {store.shards} shards (an "
                         "interrupted extract_features.py): run the same command again to encode them")
    return store.load()


def dataset_images(dataset: str, split: str, data_root: Optional[str]) -> List[str]:
    """Image paths of a training split or of a test set's database."""
    if is_training_set(dataset, data_root):
        return list(load_training_db(dataset, split, data_root)["images"])
    prepare_test_set(dataset, data_root)
    return query_and_database_paths(configdataset(dataset, data_subdir(data_root, "test")))[0]


def extract_dataset_features(network: LoadedNetwork, dataset: str, split: str, key: DescriptorKey,
                             data_root: Optional[str] = None, output: Optional[Path] = None,
                             shard_size: Optional[int] = None, store_dtype: str = "float32",
                             config: ExtractionConfig = DEFAULT_EXTRACTION) -> Path:
    """Encode a data set (split) with ``network`` as ``key`` says (image size, scales, msp;
    its ``config`` is ``config``) and write ``<data_root>/features/<name>.npy`` with the key
    in its settings. With ``shard_size`` the descriptors go to a resumable descriptor store, the
    folder ``<name>.store`` (float32 or float16), which ``--feat-path`` reads as well."""
    images = dataset_images(dataset, split, data_root)
    is_train_set = is_training_set(dataset, data_root)
    path = output or data_subdir(data_root, "features") / feature_file_name(
        dataset, network.name, split if is_train_set else None, key.image_size)
    log.info(">> %s (%s): extracting %d images with %s...", dataset, split, len(images), network.name)
    if shard_size:
        folder = path.with_suffix(".store")
        shards = config.but(progress=config.progress and current_world().is_main, desc=f"{dataset} {split} shard")
        store = encode_into_store(network.net, images, folder, StoreKey(key, network.name, store_dtype, shard_size),
                                  shards)
        log.info(">> %s: %d x %d descriptors in %d shards in %s", dataset, store.dim, store.count, store.shards, folder)
        return folder
    vecs = describe_images(network.net, images, key.image_size, key.scales, key.msp,
                           config=config.but(desc=f"{dataset} {split}"))
    world = current_world()
    if world.is_main:
        write_feature_file(vecs, images, path, dict(key.record(), network=network.name))
    barrier(world)  # the other ranks read it next
    log.info(">> %s: %s x %s descriptors written to %s", dataset, vecs.shape[0], vecs.shape[1], path)
    return path


def feature_file_key(path: Path) -> Optional[DescriptorKey]:
    """The :class:`DescriptorKey` a feature file was written under (None: no whole settings)."""
    settings = feature_file_settings(path)
    return DescriptorKey.from_record(settings) if settings is not None else None
