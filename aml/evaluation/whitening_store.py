"""Where the whitening of a test comes from, in order: the checkpoint's ``meta['Lw']``, the
published file of a published network, a cache file, else learned on the whitening set (and
cached). The cache file is named by where the network came from: next to its checkpoint file,
under ``<data_root>/whiten/`` for a network known by name (published or off-the-shelf), and
nowhere for a network that exists only in memory (the per-epoch students of
``main.py --test-freq``), whose whitening is learned each time instead of leaving a file per
epoch behind. A cache file holds the key of the descriptors it was learned from (network
content, whitening images, image size, scales, msp, pixel path) and is learned again when
that key changes: a checkpoint replaced at the same path, other scales."""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from aml.data.paths import DataRootLike, data_subdir
from aml.data.formats import TrainingDb
from aml.data.trainsets import load_whitening_db, registered_spelling
from aml.descriptors import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.key import DescriptorKey
from aml.evaluation.whitening import WhiteningError, check_whitening, whitenlearn
from aml.networks.pretrained import PRETRAINED, PUBLISHED_WHITENING_SET
from aml.networks.loading import LoadedNetwork, published_whitening_file
from aml.utils.atomic import optional_write
from aml.utils.distributed import current_world, found_by_all, warn_once
from aml.utils.errors import NoAccess, named_few
from aml.utils.plain_files import CheckpointError, load_plain_file, save_plain_file
from aml.utils.types import PathLike

log = logging.getLogger(__name__)
#: what a whitening file is, named when another kind of file is given as one
WHITENING_FILE = "a whitening file (torch.save of {'m': ..., 'P': ...}, as test.py's cache and aml.search write it)"
Whitening = Tuple[np.ndarray, np.ndarray]


def whitening_cache_path(
    encoder: LoadedNetwork, whitening_set: str, multiscale: bool, image_size: int, data_root: DataRootLike
) -> Optional[Path]:
    """``<checkpoint>_<SET>_whiten[_ms]_<imsize>.pth`` next to a checkpoint file, the same
    name in ``<data_root>/whiten/`` for a named network, None for one only in memory."""
    stem = f"_{whitening_set}_whiten{'_ms' if multiscale else ''}_{image_size}.pth"
    if encoder.path is not None:
        return encoder.path.with_name(encoder.path.name + stem)
    if encoder.named:
        return data_subdir(data_root, "whiten") / (encoder.name + stem)
    return None


@dataclass(frozen=True)
class WhiteningRequest:
    """Which learned whitening to provide, and how its images are encoded (as the test images).

    Attributes:
        whitening_set: the whitening set's name (a training set with whitening pairs).
        image_size: the longer side images are shrunk to.
        scales: the multi-scale factors.
        extraction: how the images are encoded.
        data_root: the data root (where the set is, and the cache of a named network).

    Examples:
        >>> from aml.evaluation.whitening_store import WhiteningRequest
        >>> WhiteningRequest("retrieval-SfM-30k", 1024).multiscale
        False
    """

    whitening_set: str
    image_size: int
    scales: Tuple[float, ...] = (1.0,)
    extraction: ExtractionConfig = DEFAULT_EXTRACTION
    data_root: DataRootLike = None

    def __post_init__(self):
        # one spelling of a registered set: -w retrieval-sfm-120k found no stored or published
        # whitening (looked up by the registry's spelling) and learned one, in a cache of its own
        object.__setattr__(self, "whitening_set", registered_spelling(self.whitening_set))

    @property
    def multiscale(self) -> bool:
        """Whether the descriptors are averaged over several scales."""
        return len(self.scales) > 1


def learn_whitening(
    encoder: LoadedNetwork, request: WhiteningRequest, db: TrainingDb, skipped: Optional[List[int]] = None
) -> Whitening:
    """Learn Lw on the whitening set's images (``db``), encoded as ``request`` says; images
    that could not be read (``skip_bad``) are left out, with their pairs (their zero
    descriptors would move the mean and the pairs' scatter), and appended to ``skipped``."""
    log.info(">> %s: Learning whitening with %s...", request.whitening_set, encoder.name)
    skipped = [] if skipped is None else skipped
    vecs = describe_images(
        encoder.net, db["images"], request.image_size, request.scales, config=request.extraction, skipped=skipped
    )
    qidxs, pidxs = list(db["qidxs"]), list(db["pidxs"])
    if skipped:
        gone = set(skipped)
        kept = [i for i in range(vecs.shape[1]) if i not in gone]
        place = {old: new for new, old in enumerate(kept)}
        pairs = [(place[q], place[p]) for q, p in zip(qidxs, pidxs, strict=True) if q in place and p in place]
        warn_once(
            log,
            ">> %s: %d images could not be read; the whitening is learned without them and without %d of its %d pairs",
            request.whitening_set,
            len(gone),
            len(qidxs) - len(pairs),
            len(qidxs),
        )
        vecs, qidxs, pidxs = vecs[:, kept], [q for q, _ in pairs], [p for _, p in pairs]
    if len(qidxs) < vecs.shape[0]:  # the pairs' differences span fewer dimensions than there are
        warn_once(
            log,
            ">> %s: %d pairs for %d-d descriptors: with fewer pairs than dimensions the whitening is nearly singular "
            "and may lower the mAP; compare the plain and whitened results, or learn it on a larger set",
            request.whitening_set,
            len(qidxs),
            vecs.shape[0],
        )
    return whitenlearn(vecs, qidxs, pidxs)


def read_whitening_file(path: PathLike, dim: int) -> Whitening:
    """The whitening (m, P) of a file as aml and cirtorch save them (a dict with ``m`` and ``P``).

    Args:
        path: the file (a published whitening, a store's, ``--whitening-file``; a cache, which
            also records what it was learned from, is read by `learned_whitening`).
        dim: the dimension of the descriptors it is to whiten.

    Returns:
        (m, P), checked (`aml.evaluation.whitening.check_whitening`: shapes, finite values).

    Raises:
        CheckpointError: for a file that is not a readable torch or pickle file.
        WhiteningError: for a file that holds no whitening, or one not of ``dim``-d descriptors.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.whitening_store import read_whitening_file, save_whitening_file
        >>> save_whitening_file("lw.pth", (np.zeros((4, 1)), np.eye(4)))  # doctest: +SKIP
        >>> [a.shape for a in read_whitening_file("lw.pth", 4)]  # doctest: +SKIP
        [(4, 1), (4, 4)]
    """
    return _whitening_of(load_plain_file(path, wanted=WHITENING_FILE), dim, str(path))


def save_whitening_file(path: PathLike, whitening: Whitening, key: Optional[str] = None) -> None:
    """Write ``whitening`` (m, P) as `read_whitening_file` reads it; a cache records the digest
    ``key`` of what it was learned from."""
    m, P = whitening
    save_plain_file({"m": m, "P": P} if key is None else {"m": m, "P": P, "key": key}, path)


def _whitening_of(data, dim: int, source: str) -> Whitening:
    """(m, P) of a whitening file's contents, checked (`check_whitening`)."""
    if not isinstance(data, dict) or "m" not in data or "P" not in data:
        found = named_few(data) if isinstance(data, dict) else type(data).__name__
        raise WhiteningError(f"{source} holds {found}, not a whitening with 'm' and 'P'; download or learn it again")
    return check_whitening(data["m"], data["P"], dim, source)


def _spelt_otherwise(cache: Path) -> Optional[Path]:
    """A file beside ``cache`` whose name differs from its name by case alone, or None."""
    folded = cache.name.casefold()
    try:
        return next((p for p in cache.parent.iterdir() if p.name.casefold() == folded and p.is_file()), None)
    except OSError:  # no folder yet
        return None


def _cached(cache: Path, digest: str, whitening_set: str, dim: int) -> Optional[Whitening]:
    """The whitening in ``cache`` if it was learned under ``digest``, else None (said in the log);
    a cache that cannot be read or is not a whitening is learned again, as a missing one. One
    an older aml saved under the set's name typed in another case (``-w SYNTH-SFM``) is read
    too (its key tells whether it fits)."""
    if not cache.exists():
        cache = _spelt_otherwise(cache) or cache
    if not cache.exists():
        return None
    try:
        data = load_plain_file(cache, wanted=WHITENING_FILE)
        if not isinstance(data, dict) or data.get("key") != digest:
            log.info(
                ">> %s: %s was learned for another network, scales or images; learning it again", whitening_set, cache
            )
            return None
        found = _whitening_of(data, dim, str(cache))
    except (CheckpointError, WhiteningError, NoAccess) as err:  # an optional file: learned again
        warn_once(log, ">> %s: the whitening cache cannot be used, learning it again (%s)", whitening_set, err)
        return None
    log.info(">> %s: whitening read from %s", whitening_set, cache)
    return found


def _stored(encoder: LoadedNetwork, whitening_set: str, multiscale: bool) -> Optional[Tuple[object, object, str]]:
    """(m, P, what they are) of the checkpoint's ``meta['Lw']`` for ``whitening_set``, or None
    when it holds none for this set and scale."""
    lw = encoder.net.meta.get("Lw")
    source = f"{encoder.path or encoder.name}: meta['Lw']"
    if lw is None:
        return None
    if not isinstance(lw, dict):
        raise WhiteningError(
            f"{source} is a {type(lw).__name__}, not {{set: {{'ss': {{'m', 'P'}}, 'ms': ...}}}}; the "
            "checkpoint is damaged: test without -w, or save it again without 'Lw'"
        )
    entry, kind = lw.get(whitening_set), "ms" if multiscale else "ss"
    if entry is None:
        return None
    where = f"{source}['{whitening_set}']"
    if not isinstance(entry, dict):
        raise WhiteningError(
            f"{where} is a {type(entry).__name__}, not {{'ss': {{'m', 'P'}}, 'ms': ...}}; the checkpoint is damaged"
        )
    if kind not in entry:
        log.info(">> %s: %s has no '%s' whitening; learning it", whitening_set, where, kind)
        return None
    if not isinstance(entry[kind], dict) or "m" not in entry[kind] or "P" not in entry[kind]:
        raise WhiteningError(f"{where}['{kind}'] is not a dict with 'm' and 'P'; the checkpoint is damaged")
    return entry[kind]["m"], entry[kind]["P"], f"{where}['{kind}']"


def known_whitening(encoder: LoadedNetwork, request: WhiteningRequest, published: bool = True) -> Optional[Whitening]:
    """The whitening that needs neither the whitening set nor learning: the checkpoint's meta
    Lw, else the published file of a published network (``published``), checked
    (`check_whitening`: finite, of the encoder's dimension).

    Args:
        encoder: the network whose descriptors are whitened.
        request: the whitening set, image size and scales (their ``ss``/``ms`` entry).
        published: look for a published network's file.

    Returns:
        (m, P), or None when it has to be found in the cache or learned (`learned_whitening`).

    Raises:
        WhiteningError: naming the checkpoint or file, when a whitening read is not one.
    """
    whitening_set = request.whitening_set
    dim = encoder.net.meta["outputdim"]
    stored = _stored(encoder, whitening_set, request.multiscale)
    if stored is not None:
        log.info(">> %s: Whitening is precomputed, loading it...", whitening_set)
        m, P, source = stored
        return check_whitening(m, P, dim, source)
    entry = PRETRAINED.get(encoder.name) if encoder.named else None
    if published and entry is not None and entry.whitening_url:
        if whitening_set != PUBLISHED_WHITENING_SET:  # the original used it whatever the set asked
            log.info(
                ">> %s: %s's published whitening was learned on %s, not used",
                whitening_set,
                encoder.name,
                PUBLISHED_WHITENING_SET,
            )
            return None
        path = published_whitening_file(entry.name, request.data_root)
        assert path is not None  # the entry has a whitening_url
        log.info(">> %s: whitening from the published file %s", whitening_set, path)
        return read_whitening_file(path, dim)
    return None


def learned_whitening(
    encoder: LoadedNetwork, request: WhiteningRequest, db: TrainingDb, key: DescriptorKey
) -> Whitening:
    """The whitening learned on the whitening set: read from its cache file when it was learned
    from the same descriptors, else learned (and cached), checked (`check_whitening`).

    Args:
        encoder: the network whose descriptors are whitened.
        request: the whitening set and how its images are encoded.
        db: the whitening set (`aml.data.trainsets.read_whitening_db`).
        key: what the encoder's descriptors depend on (`DescriptorKey.of` the encoder at the
            request's image size, scales and extraction); with the images, the cache's key.

    Returns:
        (m, P).

    Raises:
        WhiteningError: when the learned whitening is not one (too few or repeated pairs).
    """
    whitening_set = request.whitening_set
    dim = encoder.net.meta["outputdim"]
    cache = whitening_cache_path(encoder, whitening_set, request.multiscale, request.image_size, request.data_root)
    digest = _learned_from(key, db) if cache is not None else ""
    found = _cached(cache, digest, whitening_set, dim) if cache is not None else None
    found = found_by_all(found, request.extraction.collective)  # else all learn it, collectively
    if found is not None:
        return found
    skipped: List[int] = []
    m, P = check_whitening(
        *learn_whitening(encoder, request, db, skipped),
        dim,
        f"the whitening learned on {whitening_set} (too few or repeated pairs?)",
    )
    if skipped:  # a run without --skip-bad-images must not read a whitening learned without them
        log.info(">> %s: not cached, learned without %d unreadable images", whitening_set, len(skipped))
    elif cache is not None and current_world().is_main:
        with optional_write(f"{whitening_set}: the whitening cache"):
            save_whitening_file(cache, (m, P), digest)
            log.info(">> %s: Saving to %s...", whitening_set, cache)
    return m, P


def _learned_from(key: DescriptorKey, db: TrainingDb) -> str:
    """The digest of what a whitening is learned from: the encoder's key with the images (their
    paths, sizes and times), and the query/positive pairs (a whitening db edited alone)."""
    pairs = hashlib.sha1(json.dumps([list(map(int, db["qidxs"])), list(map(int, db["pidxs"]))]).encode())
    return f"{key.digest(db['images'])}-{pairs.hexdigest()[:16]}"


def get_whitening(encoder: LoadedNetwork, request: WhiteningRequest, published: bool = True) -> Whitening:
    """Whitening for ``encoder``: the checkpoint's meta Lw, else the published file of a
    published network (``published``), else the cache, else learned (and cached). Each is
    checked (`check_whitening`: finite, of the encoder's dimension) before it is used.

    Raises:
        WhiteningError: naming the checkpoint or file, when a whitening read is not one.
    """
    known = known_whitening(encoder, request, published)
    if known is not None:
        return known
    db = load_whitening_db(request.whitening_set, request.data_root)
    key = DescriptorKey.of(encoder.net, request.image_size, request.scales, request.extraction)
    return learned_whitening(encoder, request, db, key)
