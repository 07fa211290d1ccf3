"""The store folder of `aml.search`: a database's images encoded once by the teacher, written
by `build_store` and opened for search by `open_database`.

A store is a folder: the teacher's descriptors as a sharded descriptor store (the one the +1M
protocol uses, `aml.descriptors.store`: ``manifest.json`` with the `DescriptorKey`
and the teacher's name, ``images.txt``, ``shard_*.npy``), ``search.json`` (the teacher as it
was given, for the query-side check, and the DBA applied at indexing; written last), optionally
``whitening.pth`` (the teacher's learned whitening, applied to both sides), ``dba.npy`` (the
descriptors after database-side augmentation, whitened first; searched instead of the shards)
and ``index.faiss`` (an IVF-PQ index, `aml.search.faiss_index`).
Stores of the older one-file layout (``descriptors.npy`` with its image list and settings)
are read, with a warning, until aml `LEGACY_LAYOUT_READ_UNTIL`.
"""

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.descriptors import DEFAULT_EXTRACTION, DescriptorKey, ExtractionConfig, feature_file_settings
from aml.descriptors.store import DescriptorStore, StoreKey, StoreMismatch, encode_into_store, open_store
from aml.evaluation.reranking import Reranking, database_augmentation
from aml.evaluation.whitening import whitenapply
from aml.networks.loading import LoadedNetwork
from aml.search.database import DBA, INDEX, REBUILD, SEARCH, WHITENING, SearchDatabase, StoreError, Whitening
from aml.utils.atomic import atomic_write
from aml.utils.types import PathLike
from aml.utils.plain_files import load_plain_file, save_plain_file

log = logging.getLogger(__name__)
LEGACY_FILES = ("descriptors.npy", "descriptors_img_list.txt", "descriptors.npy.json")  # the one-file layout
#: the last aml version that reads stores of the one-file layout
LEGACY_LAYOUT_READ_UNTIL = "0.2.0"
SHARD_SIZE = 65536  # images per shard (256 MB of 1024-d float32)
#: what build_store records, and the query side reads
STORE_SETTINGS = ("network", "source", "fingerprint", "image_size", "scales", "dim")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(source: PathLike) -> List[str]:
    """Every image file under a folder (sorted), or the lines of a text file list.

    Args:
        source: a folder (its images, by extension, at any depth) or a text file of image
            paths, one a line.

    Returns:
        The image paths.

    Examples:
        >>> import pathlib, tempfile
        >>> from aml.search import list_images
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name in ("b.jpg", "a.PNG", "notes.txt"):
        ...         (pathlib.Path(folder) / name).touch()
        ...     [pathlib.Path(path).name for path in list_images(folder)]
        ['a.PNG', 'b.jpg']
    """
    source = Path(source)
    if source.is_dir():
        return sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [line.strip() for line in source.read_text().splitlines() if line.strip()]


def build_store(
    teacher: LoadedNetwork,
    images: Sequence[str],
    folder: PathLike,
    image_size: int,
    scales: Sequence[float] = (1,),
    whitening: Optional[Whitening] = None,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    reranking: Reranking = Reranking(),
) -> Path:
    """Encode a database's images with the teacher into a store.

    The descriptors are a sharded descriptor store (`aml.descriptors.store`, float32):
    an interrupted indexing, run again with the same teacher, settings and images, resumes at
    its first missing shard. Indexing into a complete store encodes everything again (its
    images may have changed in place); the whitening, DBA and IVF-PQ index there are
    removed: they belong to the old descriptors. With ``reranking.dba``, the (whitened) descriptors
    are augmented once (`aml.evaluation.database_augmentation`) into ``dba.npy``, which
    searches use instead, and ``search.json`` records it; the shards stay the teacher's own.

    Args:
        teacher: the teacher and its provenance (the name or path it was loaded from is
            recorded for the query-side check).
        images: the database's image files.
        folder: the store's folder.
        image_size: the longer side images are shrunk to.
        scales: the multi-scale factors.
        whitening: the teacher's learned whitening (m, P), saved with the store and applied to
            both sides; None: none.
        config: how to extract (`aml.descriptors.ExtractionConfig`).
        reranking: its ``dba`` neighbours augment each database descriptor, weighted by their
            similarities to the power ``dba_alpha`` (DBA; 0: none); its query-side fields are
            not used here.

    Returns:
        The store's folder.

    Raises:
        StoreError: when ``reranking.dba`` leaves no image out (at most N - 1 neighbours).

    Examples:
        >>> from aml.networks.loading import load_teacher
        >>> from aml.search import build_store, list_images
        >>> teacher = load_teacher("vgg16")  # doctest: +SKIP
        >>> build_store(teacher, list_images("photos/"), "photos.store", 1024)  # doctest: +SKIP
        PosixPath('photos.store')
    """
    folder = Path(folder)
    images = [str(Path(i).resolve()) for i in images]
    dba, dba_alpha = reranking.dba, reranking.dba_alpha
    if dba >= len(images):
        raise StoreError(
            f"--dba {dba}: {len(images)} images to index, so an image has at most {len(images) - 1} "
            f"neighbours; give --dba {len(images) - 1} or less"
        )
    key = StoreKey(
        DescriptorKey.of(teacher.net, image_size, scales, config, teacher.fingerprint),
        teacher.name,
        "float32",
        SHARD_SIZE,
    )
    interrupted = not (folder / SEARCH).is_file()
    (folder / SEARCH).unlink(missing_ok=True)  # written last: until then the store is incomplete
    _clear_descriptors(folder, images, key, int(teacher.net.meta["outputdim"]), keep_matching=interrupted)
    for stale in (folder / WHITENING, folder / DBA, folder / INDEX):
        if stale.is_file():
            log.info(">> replacing the store in %s: %s removed", folder, stale.name)
            stale.unlink()
    store = encode_into_store(teacher.net, images, folder, key, config.but(desc="indexing"))
    if whitening is not None:
        save_plain_file({"m": whitening[0], "P": whitening[1]}, folder / WHITENING)
    record: Dict[str, Any] = {"source": teacher.spec.given}
    if dba:
        record["dba"] = _write_augmented(store, folder, whitening, dba, dba_alpha, str(config.device_for()))
    atomic_write(folder / SEARCH, lambda out: out.write(json.dumps(record).encode()))
    log.info(">> store of %d images by %s written to %s", store.count, teacher.name, folder)
    return folder


def _write_augmented(
    store: DescriptorStore, folder: Path, whitening: Optional[Whitening], k: int, alpha: float, device: str
) -> Dict[str, Any]:
    """DBA of the store's (whitened) descriptors into ``dba.npy``; returns what search.json records."""
    vecs = store.load()
    if whitening is not None:
        vecs = whitenapply(vecs, *whitening)
    augmented = database_augmentation(vecs, k, alpha, device, excluded=store.skipped())
    atomic_write(folder / DBA, lambda out: np.save(out, augmented, allow_pickle=False))
    log.info(">> DBA of %d neighbours (alpha %g) applied to the store's descriptors: %s", k, alpha, DBA)
    return {"k": k, "alpha": alpha}


def _clear_descriptors(folder: Path, images: Sequence[str], key: StoreKey, dim: int, keep_matching: bool) -> None:
    """Remove the descriptors of an earlier indexing from ``folder`` (and those of the older
    one-file layout); with ``keep_matching``, shards of this very ``key`` and ``images`` stay
    (an interrupted indexing resumes)."""
    legacy = [folder / name for name in LEGACY_FILES if (folder / name).is_file()]
    stale: List[Path] = []
    if (folder / "manifest.json").is_file():
        try:
            if not keep_matching:
                raise StoreMismatch("a complete store is indexed again")
            DescriptorStore.create(folder, images, key, dim)
        except StoreMismatch:
            stale = [
                folder / "manifest.json",
                folder / "images.txt",
                folder / "skipped.txt",
                *folder.glob("shard_*.npy"),
                *folder.glob("shard_*.json"),
            ]
    for path in legacy + stale:
        path.unlink(missing_ok=True)
    if legacy or stale:
        log.info(">> replacing the store in %s: the descriptors of its earlier indexing removed", folder)


def _sharded_descriptors(folder: Path) -> Tuple[np.ndarray, List[str], Dict[str, Any]]:
    """(D x N descriptors, images, settings) of a store folder, each part checked."""
    try:
        store = open_store(folder)
    except ValueError as err:
        raise StoreError(f"{err}; index it again ({REBUILD})") from None
    if not store.complete():
        raise StoreError(
            f"the store {folder} lacks {len(store.missing())} of {store.shards} shards (an interrupted "
            f"indexing): run the same {REBUILD} command again to encode them"
        )
    if not (folder / SEARCH).is_file():
        raise StoreError(
            f"the store {folder} has no {SEARCH} (the indexing did not finish): run the same {REBUILD} command again"
        )
    try:
        vecs = store.load()
        record = json.loads((folder / SEARCH).read_text())
        source = record["source"]
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"the store {folder} is damaged ({err}); index it again ({REBUILD})") from None
    if not np.isfinite(vecs).all():
        raise StoreError(f"the store {folder} holds NaN or infinite values: it is damaged; index it again ({REBUILD})")
    settings = dict(store.key.record(), source=source, dim=store.dim)
    if record.get("dba"):
        settings["dba"] = record["dba"]
    return vecs, store.images, settings


def _augmented(folder: Path, shape: Tuple[int, int]) -> np.ndarray:
    """The store's DBA descriptors (``dba.npy``), checked against its shape."""
    path = folder / DBA
    try:
        vecs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise StoreError(
            f"cannot read {path} ({err}), which {SEARCH} names: the store is damaged; index it again "
            f"({REBUILD} --dba K)"
        ) from None
    if vecs.shape != shape or vecs.dtype.kind != "f" or not np.isfinite(vecs).all():
        raise StoreError(
            f"{path} holds {vecs.dtype} descriptors of shape {vecs.shape}, not the store's finite "
            f"{shape}: the store is damaged; index it again ({REBUILD} --dba K)"
        )
    return vecs


def _legacy_descriptors(folder: Path) -> Tuple[np.ndarray, List[str], Dict[str, Any]]:
    """The same from a store of the older one-file layout (descriptors.npy with its image
    list and settings), which aml.search wrote before it wrote shards (read until
    `LEGACY_LAYOUT_READ_UNTIL`, with a warning)."""
    path = folder / LEGACY_FILES[0]
    settings = feature_file_settings(path)
    if settings is None:
        raise StoreError(
            f"{folder} is not a complete store (no {path.name} with matching settings); build it with: {REBUILD}"
        )
    log.warning(
        ">> %s has the one-file layout of aml.search before sharded stores, which aml reads until version "
        "%s: index it again (%s) to keep it",
        folder,
        LEGACY_LAYOUT_READ_UNTIL,
        REBUILD,
    )
    missing = sorted(set(STORE_SETTINGS) - set(settings))
    if missing:
        raise StoreError(
            f"the settings of {path} lack {', '.join(missing)}: it is not a store made by "
            f"aml.search or was edited; index it again ({REBUILD})"
        )
    try:
        vecs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise StoreError(f"cannot read {path} ({err}): the store is damaged; index it again ({REBUILD})") from None
    if vecs.ndim != 2 or vecs.dtype.kind != "f" or vecs.shape[0] != settings.get("dim"):
        raise StoreError(
            f"{path} holds a {vecs.dtype} array of shape {vecs.shape}, not {settings.get('dim')}-d float "
            f"descriptors as its settings say: the store is damaged; index it again ({REBUILD})"
        )
    if not np.isfinite(vecs).all():
        raise StoreError(f"{path} holds NaN or infinite values: the store is damaged; index it again ({REBUILD})")
    images = (folder / LEGACY_FILES[1]).read_text(errors="surrogateescape").splitlines()
    if len(images) != vecs.shape[1]:
        raise StoreError(
            f"{path} holds {vecs.shape[1]} descriptors but its image list {len(images)} "
            f"images: the store is damaged; index it again ({REBUILD})"
        )
    return vecs, images, settings


def _whitening(folder: Path, dim: int) -> Optional[Whitening]:
    """The store's whitening (None without one), checked against its dimension."""
    if not (folder / WHITENING).is_file():
        return None
    data = load_plain_file(folder / WHITENING)
    try:
        whitening = (np.asarray(data["m"]), np.asarray(data["P"]))
    except (TypeError, KeyError, IndexError, ValueError) as err:
        raise StoreError(
            f"{folder / WHITENING} is not a whitening (m, P): {type(err).__name__} {err}; delete it "
            f"or index again ({REBUILD})"
        ) from None
    if whitening[1].ndim != 2 or {w.dtype.kind for w in whitening} != {"f"}:
        raise StoreError(
            f"{folder / WHITENING} is not a whitening (m, P of floats); delete it or index again ({REBUILD})"
        )
    if whitening[1].shape != (dim, dim) or whitening[0].size != dim:
        raise StoreError(
            f"{folder / WHITENING} whitens {whitening[1].shape[1]}-d descriptors but the store holds "
            f"{dim}-d ones: it belongs to another store; delete it or index again"
        )
    return whitening


def open_database(folder: PathLike) -> SearchDatabase:
    """Load a store's database for search: its descriptors, whitened and augmented as the store was indexed.

    Either layout is read; the descriptors are whitened when the store has a whitening (and
    augmented with DBA when it was indexed so).

    Args:
        folder: the store's folder.

    Returns:
        The database.

    Raises:
        StoreError: naming what is missing or damaged, with the fix.

    Examples:
        >>> from aml.search import open_database
        >>> database = open_database("photos.store")  # doctest: +SKIP
        >>> database.vecs.shape, database.settings["network"]  # doctest: +SKIP
        ((512, 10000), 'retrievalSfM120k-vgg16-gem')
    """
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        vecs, images, settings = _sharded_descriptors(folder)
    else:
        vecs, images, settings = _legacy_descriptors(folder)
    whitening = _whitening(folder, vecs.shape[0])
    if settings.get("dba"):
        vecs = _augmented(folder, vecs.shape)  # whitened before it was augmented
    elif whitening is not None:
        vecs = whitenapply(vecs, *whitening)
    return SearchDatabase(folder, np.ascontiguousarray(vecs, dtype=np.float32), images, settings, whitening)
