"""Descriptors of whole data sets: feature files for training, an on-disk cache for
database descriptors at test time, and network fingerprints that key them."""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from aml.data.images import image_transform
from aml.extraction import extract_vectors
from aml.utils.atomic import atomic_write

log = logging.getLogger(__name__)


def network_fingerprint(net: torch.nn.Module) -> str:
    """A content hash of the weights and the meta that shape the descriptors."""
    digest = hashlib.sha1()
    meta = {k: v for k, v in getattr(net, "meta", {}).items() if k != "Lw"}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_images(net, images: Sequence[str], image_size: int, scales: Sequence[float] = (1,),
                    msp: float = 1.0, bbxs=None, **options: Any) -> np.ndarray:
    """D x N float32 descriptors of ``images`` with the network's own mean/std transform
    (``options`` go to :func:`aml.extraction.extract_vectors`)."""
    transform = image_transform(net.meta["mean"], net.meta["std"])
    return extract_vectors(net, images, image_size, transform, bbxs=bbxs, ms=list(scales), msp=msp, **options).numpy()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda out: np.save(out, array))


def image_list_key(images: Sequence[str]) -> List[Any]:
    """What identifies the contents of an image list cheaply: each path with its size and
    modification time (nanoseconds), so that replacing or truncating an image changes the
    key without hashing every file (a missing image keys as size -1)."""
    key: List[Any] = []
    for image in images:
        try:
            stat = os.stat(image)
            key.append([str(image), stat.st_size, stat.st_mtime_ns])
        except OSError:
            key.append([str(image), -1, 0])
    return key


def cached_descriptors(net, images: Sequence[str], image_size: int, scales: Sequence[float], msp: float,
                       cache_dir: Optional[Path], tag: str, fingerprint: Optional[str] = None,
                       skipped: Optional[List[int]] = None, **options: Any) -> np.ndarray:
    """:func:`describe_images`, cached in ``cache_dir`` under a key of (network content,
    image list with each file's size and mtime, image size, scales, msp), so a database is
    encoded once per network and encoded again when an image changes. ``fingerprint``
    spares hashing the weights again when the caller already did. Descriptors with skipped
    images (``skip_bad``) are not cached."""
    skipped = skipped if skipped is not None else []
    if cache_dir is None:
        return describe_images(net, images, image_size, scales, msp, skipped=skipped, **options)
    fingerprint = fingerprint or network_fingerprint(net)
    key = hashlib.sha1(json.dumps([fingerprint, image_list_key(images), image_size,
                                   [float(s) for s in scales], round(float(msp), 6)]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{tag}_{key}.npy"
    if path.exists():
        try:
            vecs = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            vecs = None
        if vecs is not None and vecs.ndim == 2 and vecs.shape[1] == len(images) and np.isfinite(vecs).all():
            log.info(">> %s: database descriptors read from cache %s", tag, path)
            return vecs
        log.warning(">> %s: cache file %s is unreadable or stale; encoding again", tag, path)
    vecs = describe_images(net, images, image_size, scales, msp, skipped=skipped, **options)
    if not skipped:
        _atomic_save(path, vecs.astype(np.float32))
    return vecs


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
    sidecar = _settings_path(path)
    sidecar.unlink(missing_ok=True)
    _atomic_save(path, np.ascontiguousarray(vecs, dtype=np.float32))
    listing = "".join(f"{image}\n" for image in images)
    atomic_write(_listing_path(path), lambda out: out.write(listing.encode()))
    record = dict(settings or {}, columns=int(vecs.shape[1]), npy_bytes=path.stat().st_size,
                  images_sha1=_text_sha1(listing))
    atomic_write(sidecar, lambda out: out.write(json.dumps(record, sort_keys=True).encode()))
    return path


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
    """Read a D x N teacher feature file and check its shape against the data set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist; create it with extract_features.py")
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
