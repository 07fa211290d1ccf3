"""The database-descriptor cache of test.py: one ``.npy`` per (network, image list with each
file's size and mtime, image size, scales, msp) in ``<data_root>/features/cache/``, the
least recently used beyond ``keep`` per data set evicted."""

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from aml.descriptors.extraction import DEFAULT_EXTRACTION, ORIGINAL_PIXELS, ExtractionConfig, describe_images
from aml.descriptors.fingerprint import network_fingerprint
from aml.networks.retrieval_net import multiscale_power
from aml.utils.atomic import atomic_write, optional_write
from aml.utils.distributed import current_world

log = logging.getLogger(__name__)
DEFAULT_KEEP = 8  # cache files kept per data set (each is D x N float32)


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


def descriptor_key(net, images: Sequence[str], image_size: int, scales: Sequence[float], config: ExtractionConfig,
                   fingerprint: Optional[str] = None) -> str:
    """A 16-hex key of what decides the descriptors of ``images``: the network's content, the
    image list with each file's size and mtime, image size, scales, the network's msp and
    pixel path (the original's "pil-fp32" pixels add nothing, so the keys of older caches
    still match)."""
    fields = [fingerprint or network_fingerprint(net), image_list_key(images), image_size, [float(s) for s in scales],
              round(float(multiscale_power(net, list(scales))), 6)]
    pixels = config.pixel_path(net)
    if pixels != ORIGINAL_PIXELS:
        fields.append(pixels)
    return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:16]


def cached_descriptors(net, images: Sequence[str], image_size: int, scales: Sequence[float],
                       cache_dir: Optional[Path], tag: str, fingerprint: Optional[str] = None,
                       skipped: Optional[List[int]] = None, keep: int = DEFAULT_KEEP,
                       config: ExtractionConfig = DEFAULT_EXTRACTION) -> np.ndarray:
    """:func:`describe_images`, cached in ``cache_dir`` under a key of (network content,
    image list with each file's size and mtime, image size, scales, msp), so a database is
    encoded once per network and encoded again when an image changes. ``fingerprint``
    spares hashing the weights again when the caller already did. Descriptors with skipped
    images (``config.skip_bad``) are not cached. ``cache_dir`` None turns the cache off; after a
    write, only the ``keep`` most recently used files of ``tag`` stay (:func:`evict`)."""
    skipped = skipped if skipped is not None else []
    if cache_dir is None:
        return describe_images(net, images, image_size, scales, config=config, skipped=skipped)
    key = descriptor_key(net, images, image_size, scales, config, fingerprint)
    path = Path(cache_dir) / f"{tag}_{key}.npy"
    if path.exists():
        try:
            vecs = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            vecs = None
        if vecs is not None and vecs.ndim == 2 and vecs.shape[1] == len(images) and np.isfinite(vecs).all():
            log.info(">> %s: database descriptors read from cache %s", tag, path)
            os.utime(path)  # most recently used
            return vecs
        log.warning(">> %s: cache file %s is unreadable or stale; encoding again", tag, path)
    vecs = describe_images(net, images, image_size, scales, config=config, skipped=skipped)
    if not skipped and current_world().is_main:
        with optional_write(f"{tag}: the descriptor cache"):
            atomic_write(path, lambda out: np.save(out, vecs.astype(np.float32)))
            evict(Path(cache_dir), tag, keep)
    return vecs


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # evicted meanwhile by a concurrent run
        return float("-inf")


def evict(cache_dir: Path, tag: str, keep: int) -> List[Path]:
    """Delete all but the ``keep`` most recently used cache files of ``tag`` (exactly
    ``<tag>_<16 hex>.npy``, so another data set whose name starts with ``tag`` is left alone);
    returns them. Safe against a concurrent run evicting the same files."""
    own = re.compile(re.escape(tag) + r"_[0-9a-f]{16}\.npy")
    files = sorted((p for p in cache_dir.glob(f"{tag}_*.npy") if own.fullmatch(p.name)), key=_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)
        log.info(">> %s: evicted %s from the descriptor cache", tag, old.name)
    return files[keep:]
