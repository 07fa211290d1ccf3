"""The database-descriptor cache of test.py: one ``.npy`` per `DescriptorKey` and image
list (each file's size and mtime) in ``<data_root>/features/cache/``, the least recently used
beyond ``keep`` per data set evicted."""

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from aml.descriptors.extraction import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.key import DescriptorKey
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.utils.atomic import atomic_write, optional_write
from aml.utils.distributed import current_world, found_by_all, warn_once
from aml.utils.errors import NoAccess
from aml.utils.plain_files import load_npy

log = logging.getLogger(__name__)
DEFAULT_KEEP = 8  # cache files kept per data set (each is D x N float32)


def cached_descriptors(
    net: ImageRetrievalNet,
    images: Sequence[str],
    key: DescriptorKey,
    cache_dir: Path,
    tag: str,
    skipped: Optional[List[int]] = None,
    keep: int = DEFAULT_KEEP,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
) -> np.ndarray:
    """Database descriptors, encoded once per network and settings and cached on disk.

    `describe_images` at ``key``'s image size and scales, cached in ``cache_dir`` as
    ``<tag>_<key.digest(images)>.npy`` and encoded again when an image changes. Descriptors
    with skipped images (``config.skip_bad``) are not cached. After a write, only the
    ``keep`` most recently used files of ``tag`` stay (`evict`).

    Args:
        net: the network.
        images: the database's image files.
        key: what the descriptors depend on (`DescriptorKey.of` the network, the image
            size, the scales and ``config``).
        cache_dir: the cache folder.
        tag: the data set's name, the cache files' prefix.
        skipped: with ``config.skip_bad``, the indices of the unreadable images are appended
            here.
        keep: the cache files of ``tag`` kept after a write.
        config: how to extract (`ExtractionConfig`).

    Returns:
        The D x N float32 descriptors, read from the cache or encoded.

    Examples:
        >>> from pathlib import Path
        >>> from aml.descriptors import DescriptorKey, cached_descriptors
        >>> key = DescriptorKey.of(net, 1024)  # doctest: +SKIP
        >>> vecs = cached_descriptors(net, images, key, Path("data/features/cache"), "roxford5k")  # doctest: +SKIP
    """
    key.check_pixels(config, net)  # else descriptors of other pixels would be filed under the key's name
    skipped = skipped if skipped is not None else []
    path = Path(cache_dir) / f"{tag}_{key.digest(images)}.npy"
    cached = _read_cache(path, (net.meta["outputdim"], len(images)), tag)
    cached = found_by_all(cached, config.collective)
    if cached is not None:
        log.info(">> %s: database descriptors read from cache %s", tag, path)
        with contextlib.suppress(FileNotFoundError):  # evicted by another run meanwhile: read already
            os.utime(path)  # most recently used
        return cached
    # the network's own multi-scale power, as the queries get it (the key's is rounded to name the file)
    vecs = describe_images(net, images, key.image_size, key.scales, config=config, skipped=skipped)
    if not skipped and current_world().is_main:
        with optional_write(f"{tag}: the descriptor cache"):
            atomic_write(path, lambda out: np.save(out, vecs.astype(np.float32)))
            evict(Path(cache_dir), tag, keep)
    return vecs


def _read_cache(path: Path, shape: Tuple[int, int], tag: str) -> Optional[np.ndarray]:
    """The descriptors cached at ``path``, or None when there are none or they are unreadable,
    of another shape or not finite (said in the log)."""
    if not path.exists():
        return None
    try:
        vecs = load_npy(path)
    except (ValueError, OSError, EOFError, NoAccess):  # an optional file: encoded again, said below
        vecs = None
    if vecs is not None and vecs.dtype.kind == "f" and vecs.shape == shape and np.isfinite(vecs).all():
        return vecs
    warn_once(log, ">> %s: cache file %s is unreadable or stale; encoding again", tag, path)  # every rank reads it
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # evicted meanwhile by a concurrent run
        return float("-inf")


def evict(cache_dir: Path, tag: str, keep: int) -> List[Path]:
    """Delete all but the most recently used cache files of a data set.

    Only files named exactly ``<tag>_<16 hex>.npy`` count, so another data set whose name
    starts with ``tag`` is left alone. Safe against a concurrent run evicting the same files.

    Args:
        cache_dir: the cache folder.
        tag: the data set's name.
        keep: how many files stay.

    Returns:
        The deleted files.

    Examples:
        >>> import os, pathlib, tempfile
        >>> from aml.descriptors import evict
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for age in range(3):
        ...         path = pathlib.Path(folder) / f"roxford5k_{age:016x}.npy"
        ...         path.touch()
        ...         os.utime(path, (1000 - age, 1000 - age))
        ...     [path.name for path in evict(pathlib.Path(folder), "roxford5k", keep=2)]
        ['roxford5k_0000000000000002.npy']
    """
    own = re.compile(re.escape(tag) + r"_[0-9a-f]{16}\.npy")
    files = sorted((p for p in cache_dir.glob(f"{tag}_*.npy") if own.fullmatch(p.name)), key=_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)
        log.info(">> %s: evicted %s from the descriptor cache", tag, old.name)
    return files[keep:]
