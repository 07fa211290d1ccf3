"""The database-descriptor cache of test.py: one ``.npy`` per :class:`DescriptorKey` and image
list (each file's size and mtime) in ``<data_root>/features/cache/``, the least recently used
beyond ``keep`` per data set evicted."""

import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from aml.descriptors.extraction import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.key import DescriptorKey
from aml.utils.atomic import atomic_write, optional_write
from aml.utils.distributed import current_world

log = logging.getLogger(__name__)
DEFAULT_KEEP = 8  # cache files kept per data set (each is D x N float32)


def cached_descriptors(net, images: Sequence[str], key: DescriptorKey, cache_dir: Path, tag: str,
                       skipped: Optional[List[int]] = None, keep: int = DEFAULT_KEEP,
                       config: ExtractionConfig = DEFAULT_EXTRACTION) -> np.ndarray:
    """:func:`describe_images` at ``key``'s image size and scales, cached in ``cache_dir`` as
    ``<tag>_<key.digest(images)>.npy``, so a database is encoded once per network and
    settings, and encoded again when an image changes. Descriptors with skipped images
    (``config.skip_bad``) are not cached. After a write, only the ``keep`` most recently used
    files of ``tag`` stay (:func:`evict`).

    Args:
        key: what the descriptors depend on (:meth:`DescriptorKey.of` the network, the image
            size, the scales and ``config``).
    """
    skipped = skipped if skipped is not None else []
    path = Path(cache_dir) / f"{tag}_{key.digest(images)}.npy"
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
    vecs = describe_images(net, images, key.image_size, key.scales, key.msp, config=config, skipped=skipped)
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
