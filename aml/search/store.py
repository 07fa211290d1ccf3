"""The store folder of `aml.search`: a database's images encoded once by the teacher, written
by `build_store` and opened for search by `open_database`.

A store is a folder: the teacher's descriptors as a sharded descriptor store (the one the +1M
protocol uses, `aml.descriptors.store`: ``manifest.json`` with the `DescriptorKey`, the
teacher's name and each shard's sha256, ``images.txt``, ``shard_*.npy``), ``search.json`` (the
teacher as it was given, for the query-side check, the DBA applied at indexing, and the sha256
of each file below; written last), optionally ``whitening.pth`` (the teacher's learned
whitening, applied to both sides), ``dba.npy`` (the descriptors after database-side
augmentation, whitened first; searched instead of the shards) and ``index.faiss`` (an IVF-PQ
index, `aml.search.faiss_index`). A store is built in ``.<name>.indexing`` beside it, locked
(``.<name>.lock``) against a second indexing, and renamed into place when complete.
Stores of the older one-file layout (``descriptors.npy`` with its image list and settings)
are read, with a warning, until aml `LEGACY_LAYOUT_READ_UNTIL`; so are stores written before
aml recorded the hashes of their files.
"""

from collections import Counter
import json
import logging
import numbers
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, cast

import numpy as np

from aml.data.download import file_sha256
from aml.data.images import IMAGE_EXTENSIONS, check_image_list, listed_files, turned_images
from aml.descriptors import DEFAULT_EXTRACTION, DescriptorKey, ExtractionConfig, feature_file_settings
from aml.descriptors.store import (
    IMAGE_LIST,
    MANIFEST,
    DescriptorStore,
    StoreDamaged,
    StoreKey,
    encode_into_store,
    open_store,
    store_differences,
    warn_of_skipped,
)
from aml.evaluation.reranking import Reranking, database_augmentation
from aml.evaluation.whitening import WhiteningError, check_whitening, whitened_float32
from aml.evaluation.whitening_store import read_whitening_file, save_whitening_file
from aml.networks.checkpoint import OUTPUT_DIM
from aml.networks.loading import LoadedNetwork, check_loaded
from aml.search.database import (
    DBA,
    FILES,
    INDEX,
    PENDING_INDEX,
    REBUILD,
    SEARCH,
    WHITENING,
    DbaRecord,
    IvfPq,
    SearchDatabase,
    SearchRecord,
    StoreError,
    StoreSettings,
    Whitening,
    index_path,
    write_ivfpq,
)
from aml.utils.atomic import atomic_write, folder_identity, folder_lock, publish_folder
from aml.utils.bounds import NONNEGATIVE_FLOAT, POSITIVE_INT, scales_problem
from aml.utils.plain_files import load_npy
from aml.utils.errors import DataError, no_access
from aml.utils.types import PathLike
from aml.utils.text_files import TextFile, read_bounded, read_text_file

log = logging.getLogger(__name__)
LEGACY_FILES = ("descriptors.npy", "descriptors_img_list.txt", "descriptors.npy.json")  # the one-file layout
#: the last aml version that reads stores of the one-file layout
LEGACY_LAYOUT_READ_UNTIL = "0.2.0"
SHARD_SIZE = 65536  # images per shard (256 MB of 1024-d float32)
#: what build_store records, and the query side reads: the fields every StoreSettings has
STORE_SETTINGS = tuple(sorted(StoreSettings.__required_keys__))
#: what a store folder may hold: its own files (and what an atomic write leaves while it runs)
STORE_FILES: Tuple[str, ...] = (MANIFEST, IMAGE_LIST, "skipped.txt", "shard_*.npy", "shard_*.json", SEARCH, WHITENING)
STORE_FILES += (
    DBA,
    INDEX,
    PENDING_INDEX,
    *LEGACY_FILES,
    ".*.tmp",
    ".lock",
    ".shard_*.npy.lock",
)  # a killed writer's lock stays
#: the files that make a folder a store (a search store, a descriptor store, one of the one-file layout),
#: each with the key its JSON holds (None: its name alone): a ``search.json`` of another program's is no store's
STORE_MARKERS: Dict[str, Optional[str]] = {SEARCH: "source", MANIFEST: "shard_size", LEGACY_FILES[0]: None}
_MARKER_BYTES = 16 << 20  # read at most: a larger file of the name is taken for a store's, to be safe


def store_marker(folder: PathLike) -> Optional[str]:
    """The file that makes ``folder`` a store's (one of `STORE_MARKERS`), or None.

    Examples:
        >>> import json, pathlib, tempfile
        >>> from aml.search.store import store_marker
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "search.json"
        ...     _ = path.write_text(json.dumps({"benchmark": "search"}))  # a benchmark's record
        ...     other = store_marker(folder)
        ...     _ = path.write_text(json.dumps({"source": "teacher.pth.tar"}))  # a store's
        ...     (other, store_marker(folder))
        (None, 'search.json')
    """
    return next((name for name, key in STORE_MARKERS.items() if _marks_a_store(Path(folder) / name, key)), None)


def store_holding(path: PathLike) -> Optional[Path]:
    """The store folder ``path`` is, or lies in at any depth (what a store's next indexing
    would refuse a file or folder of that is not the store's), or None.

    Examples:
        >>> import json, pathlib, tempfile
        >>> from aml.search.store import store_holding
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     store = pathlib.Path(folder) / "photos.store"
        ...     store.mkdir()
        ...     _ = (store / "search.json").write_text(json.dumps({"source": "vgg16"}))
        ...     inside = store_holding(store / "deploy" / "student.onnx") == store
        ...     beside = store_holding(store / ".." / "deploy")
        >>> inside, beside
        (True, None)
    """
    absolute = Path(os.path.abspath(path))  # ".." resolved by name, as the file system would
    return next((folder for folder in (absolute, *absolute.parents) if store_marker(folder) is not None), None)


def _marks_a_store(path: Path, key: Optional[str]) -> bool:
    """Whether ``path`` is the store's file of its name: there, and unless it is readable JSON
    without ``key`` (another program's file), a store's (a damaged or very large one too)."""
    if key is None or not path.is_file():
        return path.exists()
    try:
        if path.stat().st_size > _MARKER_BYTES:
            return True
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):  # a store's file damaged by a crash: still the store's
        return True
    return isinstance(record, dict) and key in record


#: an image list (names that are not UTF-8 kept as they are)
IMAGE_LIST_TEXT = TextFile(
    "the image list", "give a folder of images or a text file of paths, one a line", StoreError, names=True
)


def list_images(source: PathLike, name_left_out: bool = False) -> List[str]:
    """Every image file under a folder (sorted), or the lines of a text file list.

    Args:
        source: a folder (its images, by extension, at any depth, hidden files and folders
            left out: `aml.data.images.image_files`) or a text file of image paths, one a line.
        name_left_out: warn of a folder's files left out by their extension (an index
            would lack them: a phone's HEIC photos).

    Returns:
        The image paths.

    Examples:
        >>> import pathlib, tempfile
        >>> from aml.search import list_images
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name in ("b.jpg", "a.PNG", "notes.txt", "._b.jpg"):
        ...         (pathlib.Path(folder) / name).touch()
        ...     [pathlib.Path(path).name for path in list_images(folder)]
        ['a.PNG', 'b.jpg']
    """
    source = Path(source)
    if source.is_dir():
        listing = listed_files(source)
        if name_left_out:
            _warn_left_out(source, listing.others)
        return [str(path) for path in listing.images]
    if source.suffix.lower() in IMAGE_EXTENSIONS:
        raise StoreError(f"the image list {source} is an image, not a list of paths: {IMAGE_LIST_TEXT.fix}")
    text = read_text_file(source, IMAGE_LIST_TEXT)  # a pipe too (<(find ...))
    if text.lstrip()[:1] in ("{", "["):  # its first "image" was "[" or "{": named as missing
        raise StoreError(f"the image list {source} is a JSON file, not a list of paths: {IMAGE_LIST_TEXT.fix}")
    listed = [line.strip() for line in text.splitlines() if line.strip()]
    counts = Counter(os.path.abspath(line) for line in listed)
    seen: Set[str] = set()
    unique = []
    for line in listed:  # the first of each image, however written
        if os.path.abspath(line) not in seen:
            seen.add(os.path.abspath(line))
            unique.append(line)
    if len(unique) < len(listed):
        log.warning(
            ">> %s names %d of its %d images more than once (%d lines more, as written or by other relative "
            "paths): each image is indexed once",
            source,
            sum(1 for count in counts.values() if count > 1),
            len(unique),
            len(listed) - len(unique),
        )
    return unique


def _warn_left_out(folder: Path, others: List[Path]) -> None:
    """Name the files of ``folder`` left out by their extension (a phone's HEIC photos, GIFs):
    the store would lack them without a word."""
    if others:
        log.warning(
            ">> %d files of %s are left out: not images by their extension (%s), e.g. %s; convert them, or "
            "give the images as a list",
            len(others),
            folder,
            " ".join(sorted(IMAGE_EXTENSIONS)),
            others[0].name,
        )


def build_store(
    teacher: LoadedNetwork,
    images: Sequence[str],
    folder: PathLike,
    image_size: int,
    scales: Sequence[float] = (1,),
    whitening: Optional[Whitening] = None,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    reranking: Reranking = Reranking(),
    ivfpq: Optional[IvfPq] = None,
    replace: bool = False,
) -> Path:
    """Encode a database's images with the teacher into a store.

    The module's docstring says what a store holds and how it is written. The old store (if
    any) answers queries until the new one is complete. An interrupted indexing, run again
    alike, resumes at its first missing shard; indexing into a complete store of the same
    images encodes everything again (they may have changed in place). With ``reranking.dba``
    the descriptors are augmented once (`aml.evaluation.database_augmentation`).

    Args:
        teacher: the teacher and its provenance (kept for `aml.search.check_teacher`).
        images: the database's image files.
        folder: the store's folder: new, empty, or a store (replaced when the new one is complete).
        image_size: the longer side images are shrunk to.
        scales: the multi-scale factors.
        whitening: the teacher's learned whitening (m, P), applied to both sides; None: none.
        config: how to extract (`aml.descriptors.ExtractionConfig`).
        reranking: its ``dba`` neighbours augment each database descriptor, weighted by their
            similarities to the power ``dba_alpha`` (DBA; 0: none); αQE and SuperGlobal are
            chosen by each search, and refused here.
        ivfpq: also build this IVF-PQ index (`build_ivfpq`, its recall in ``search.json``).
        replace: replace a store of other images, teacher weights, image size or scales.

    Returns:
        The store's folder.

    Raises:
        StoreError: before any image is encoded, when ``reranking`` asks for αQE or
            SuperGlobal or a DBA of N or more neighbours, ``ivfpq`` cannot be built,
            ``whitening`` does not whiten the teacher's descriptors (another dimension, NaN
            values), ``scales`` are not multi-scale factors, or ``folder`` is one
            `check_store_folder` refuses.
        FolderInUse: when another process is indexing into ``folder``.

    Examples:
        >>> from aml.networks.loading import load_teacher
        >>> from aml.search import build_store, list_images
        >>> teacher = load_teacher("vgg16")  # doctest: +SKIP
        >>> build_store(teacher, list_images("photos/"), "photos.store", 1024)  # doctest: +SKIP
        PosixPath('photos.store')
    """
    images = images if hasattr(images, "__len__") or isinstance(images, os.PathLike) else list(images)  # a glob()
    _check_plan(teacher, images, image_size, reranking, ivfpq)
    _check_settings(whitening, scales, int(teacher.net.meta["outputdim"]))
    _warn_turned(images)
    folder = Path(folder)
    target = folder.resolve()  # a link to a store: the store it points to is replaced
    images = _absolute_once(images)
    key = _store_key(teacher, image_size, scales, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(target, fix="give another --store", beside=True):
        _refuse_foreign_files(target)
        if not replace:
            _refuse_replacing_another(target, images, key)
        staging = target.parent / f".{target.name}.indexing"
        _clear_staging(staging, images, key, int(teacher.net.meta["outputdim"]))
        store = encode_into_store(teacher.net, images, staging, key, config.but(desc="indexing"))
        _write_search_files(store, teacher.spec.given, whitening, reranking, str(config.device_for()))
        if ivfpq is not None:
            write_ivfpq(open_database(staging), ivfpq)  # under this indexing's lock
        warn_of_skipped(store, folder)  # the staging folder's list, found in the store once published
        _publish(staging, target)
    log.info(">> store of %d images by %s written to %s", store.count, teacher.name, folder)
    return folder


def _write_search_files(
    store: DescriptorStore, source: str, whitening: Optional[Whitening], reranking: Reranking, device: str
) -> None:
    """What a store holds for searching besides the teacher's shards, written into its folder:
    the whitening, DBA's augmented descriptors (computed on ``device``) and ``search.json``
    (the teacher's ``source``, DBA's record, the sha256 of both files)."""
    folder = store.folder
    record: SearchRecord = {"source": source}
    if whitening is not None:
        save_whitening_file(folder / WHITENING, whitening)
    if reranking.dba:
        record["dba"] = _write_augmented(store, whitening, reranking, device)
    record[FILES] = {name: file_sha256(folder / name) for name in (WHITENING, DBA) if (folder / name).is_file()}
    atomic_write(folder / SEARCH, lambda out: out.write(json.dumps(record).encode()))


def _absolute_once(images: Sequence[str]) -> List[str]:
    """The images as absolute paths (links kept: a git-annex or DVC photo keeps its own name),
    refusing one given twice: each copy would be a result of its own, filling the top k with
    one photo (`list_images` keeps the first of each)."""
    absolute = [os.path.abspath(image) for image in images]
    seen: Set[str] = set()
    for image in absolute:
        if image in seen:
            raise StoreError(f"{image} is given twice among the images to index; give each image once")
        seen.add(image)
    return absolute


def _publish(staging: Path, target: Path) -> None:
    """Put the complete store in ``staging`` in place of ``target``, unless files that are not
    a store's were put there meanwhile (the user's: never replaced)."""
    _refuse_foreign_files(target)
    if not publish_folder(staging, target, overwrite=True):
        raise StoreError(
            f"{target} was put there by another program while indexing (kept as it is); the new store "
            "was not written: give another --store"
        )


#: the database images whose EXIF orientation `build_store` reads (spread over the list): a
#: header each, a second or two, where all of a 1M set's would take many minutes
TURNED_SAMPLE = 1000


def _warn_turned(images: Sequence[str]) -> None:
    """Name the database photos stored turned (an EXIF orientation a viewer applies): encoded
    as stored, as by cirtorch, they are found by queries turned alike, not by upright ones."""
    step = -(-len(images) // TURNED_SAMPLE)  # rounded up: at most TURNED_SAMPLE read
    read = images[::step]
    turned = turned_images(read)
    if turned:
        log.warning(
            ">> %d of %s database images carry an EXIF orientation (first: %s): they are encoded as stored, so an "
            "upright photo of the same scene is a turned one to them; turn the files upright (e.g. PIL's "
            "ImageOps.exif_transpose) to index them as shown",
            len(turned),
            f"{len(read)} sampled" if step > 1 else f"the {len(read)}",
            turned[0],
        )


def _check_settings(whitening: Optional[Whitening], scales: Sequence[float], dim: int) -> None:
    """Refuse, before anything is encoded, a whitening the store could not be opened with
    (another dimension, NaN values) and scales that are not multi-scale factors."""
    if whitening is not None:
        try:
            check_whitening(*whitening, dim, "the whitening given")
        except (TypeError, ValueError) as err:  # not a pair, or not one of D x D arrays
            raise StoreError(
                f"{str(err).split('; ')[0]}; give the teacher's whitening (m, P), learned on its {dim}-d descriptors"
            ) from None
    problem = scales_problem(list(scales) if isinstance(scales, (list, tuple)) else scales)
    if problem:
        raise StoreError(f"scales {scales!r}: {problem}")


def _check_plan(
    teacher: LoadedNetwork, images: Sequence[str], image_size: int, reranking: Reranking, ivfpq: Optional[IvfPq]
) -> None:
    """Refuse, before anything is encoded, a teacher that is not a `LoadedNetwork`, images that
    are not a list of some, an image size that is not a number of pixels, a DBA or an IVF-PQ
    index that cannot be built, and a query-side re-ranking (αQE, SuperGlobal), which each
    search chooses, not the store."""
    check_loaded(teacher, "teacher")
    dim = int(teacher.net.meta["outputdim"])
    check_image_list(images)
    if len(images) == 0:
        raise StoreError("no images to index: give the database's image files (list_images(folder))")
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise StoreError(f"image size {image_size!r}: a store's images are shrunk to a whole number of pixels > 0")
    count = len(images)
    if reranking.qe or reranking.superglobal is not None:
        raise StoreError(
            f"{reranking.label()}: αQE and SuperGlobal re-rank each search (query_database(..., reranking=...), "
            "search query --qe/--superglobal); a store is built with DBA only (Reranking(dba=K))"
        )
    if reranking.dba >= count:
        raise StoreError(
            f"--dba {reranking.dba}: {count} images to index, so an image has at most {count - 1} "
            f"neighbours; give --dba {count - 1} or less"
        )
    problem = ivfpq.problem(count, dim) if ivfpq is not None else None
    if problem:
        raise StoreError(problem)


def _store_key(teacher: LoadedNetwork, image_size: int, scales: Sequence[float], config: ExtractionConfig) -> StoreKey:
    descriptors = DescriptorKey.of(teacher.net, image_size, scales, config, teacher.fingerprint)
    return StoreKey(descriptors, teacher.name, "float32", SHARD_SIZE)


def check_store_folder(
    folder: PathLike,
    teacher: LoadedNetwork,
    images: Sequence[str],
    image_size: int,
    scales: Sequence[float] = (1,),
    config: ExtractionConfig = DEFAULT_EXTRACTION,
) -> None:
    """Refuse, before any other work, a store folder that `build_store` would refuse.

    That is a folder holding files that are not a store's, or a store of other images, teacher
    weights, image size or scales (unless ``replace``); ``search index -w`` checks it before it
    learns the whitening.

    Args:
        folder: the store's folder.
        teacher: the teacher that would index.
        images: the images it would index.
        image_size: their size.
        scales: the multi-scale factors.
        config: how they would be extracted.

    Raises:
        StoreError: naming the folder, what differs and the fix.

    Examples:
        >>> from aml.search import check_store_folder, list_images
        >>> check_store_folder("photos.store", teacher, list_images("photos/"), 1024)  # doctest: +SKIP
    """
    target = Path(folder).resolve()
    _refuse_foreign_files(target)
    _refuse_replacing_another(
        target, [os.path.abspath(i) for i in images], _store_key(teacher, image_size, scales, config)
    )


def _refuse_replacing_another(target: Path, images: Sequence[str], key: StoreKey) -> None:
    """Refuse to replace a complete store that describes something else than the indexing
    would (`store_differences`)."""
    if not (target / SEARCH).is_file():  # no complete store there
        return
    differences = store_differences(target, images, key)
    if differences:
        raise StoreError(
            f"{target} holds a store that differs from this indexing ({len(images)} images by {key.network} at "
            f"{key.descriptors.image_size:g} px): {', '.join(differences)}; indexing would replace it: give "
            "another --store, or --replace to replace it"
        )


def _refuse_foreign_files(folder: Path) -> None:
    """Refuse a store folder that holds files that are not a search store's (a test's
    descriptor store included): indexing replaces the whole folder, and they are the user's."""
    if not folder.is_dir():
        if folder.exists():
            raise StoreError(f"{folder} is a file, not a store folder; give another --store")
        return
    if (folder / MANIFEST).is_file() and not any((folder / name).is_file() for name in (SEARCH, LEGACY_FILES[0])):
        raise StoreError(
            f"{folder} holds descriptors but no {SEARCH}: it is test.py's descriptor store (the +1M "
            "distractors', hours of encoding) or an indexing by an older aml that did not finish; indexing "
            "replaces the whole folder, so give another --store (or delete this one first if it is yours to lose)"
        )
    foreign = sorted(
        p.name for p in folder.iterdir() if not any(p.match(pattern) for pattern in STORE_FILES) or p.is_dir()
    )
    if foreign:
        raise StoreError(
            f"{folder} holds {len(foreign)} files or folders that are not a store's ({foreign[0]}, ...): indexing "
            "replaces the whole folder, so give an empty or new folder as --store"
        )
    named = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # a lock, a write's leftover
    if named and store_marker(folder) is None:  # names alone do not make a store: they may be another program's
        raise StoreError(
            f"{folder} holds {', '.join(named[:3])}{', ...' if len(named) > 3 else ''}, named as a store's files, "
            f"but no store's {SEARCH} or {MANIFEST} (another program's faiss index and image list?): indexing "
            "replaces the whole folder, so give an empty or new folder as --store"
        )


def _write_augmented(
    store: DescriptorStore, whitening: Optional[Whitening], reranking: Reranking, device: str
) -> DbaRecord:
    """DBA of the store's (whitened) descriptors into its ``dba.npy``; returns what search.json
    records."""
    vecs = store.load()
    if whitening is not None:
        vecs = whitened_float32(vecs, whitening, f"store {store.folder}'s database")
    k, alpha = reranking.dba, reranking.dba_alpha
    augmented = database_augmentation(vecs, k, alpha, device, excluded=store.skipped())
    atomic_write(store.folder / DBA, lambda out: np.save(out, augmented, allow_pickle=False))
    log.info(">> DBA of %d neighbours (alpha %g) applied to the store's descriptors: %s", k, alpha, DBA)
    return {"k": k, "alpha": alpha}


def _clear_staging(staging: Path, images: Sequence[str], key: StoreKey, dim: int) -> None:
    """Empty the staging folder of an interrupted indexing, but for the shards of this very
    ``key`` and ``images`` (which the indexing resumes from)."""
    if not staging.is_dir():
        return
    kept: Tuple[str, ...] = ()
    try:
        staged = DescriptorStore.create(staging, images, key, dim)
        stale = staged.stale_shards()
        if staged.listed is not None:  # the same files under other paths ("moved"): a store's answers are its paths
            log.info(">> the interrupted indexing listed its images under other paths: encoding every image again")
        elif not stale:
            kept = ("shard_*.npy", "shard_*.json", MANIFEST, IMAGE_LIST)
            log.info(">> %s: resuming the interrupted indexing in %s", staging.parent, staging.name)
        else:
            log.info(
                ">> images of %d shard(s) changed since the interrupted indexing encoded them: encoding "
                "every image again",
                len(stale),
            )
    except DataError:  # of other descriptors (StoreMismatch), or damaged: nothing to resume from
        pass
    for path in staging.iterdir():
        if any(path.match(pattern) for pattern in kept):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _warn_of_changed_images(store: DescriptorStore) -> None:
    """Say when images of the store changed on disk since they were indexed (a stat each): their
    descriptors, the old ones, answer for the new files until the images are indexed again."""
    stale = store.stale_shards()
    if stale:
        rows = store.shard_rows(stale[0])
        gone = next((store.images[i] for i in rows if not os.path.exists(store.images[i])), None)
        which = f"{gone} is gone" if gone is not None else f"one of {store.images[rows.start]} and the images after it"
        log.warning(
            ">> %s: %d of its shards hold images changed, moved or removed since they were indexed (the first: "
            "images %d to %d of its list; %s): searches find them by their old descriptors; index the images again "
            "(%s, with --replace where images were added or removed)",
            store.folder,
            len(stale),
            rows.start + 1,
            rows.stop,
            which,
            REBUILD,
        )


def _sharded_descriptors(folder: Path) -> Tuple[np.ndarray, List[str], StoreSettings, List[int]]:
    """(D x N descriptors, images, settings, the images that could not be read) of a store
    folder, each part checked."""
    try:
        store = open_store(folder)
    except StoreDamaged as err:
        raise StoreError(f"{err.problem}; index it again ({REBUILD})") from None
    except ValueError as err:
        raise StoreError(f"{err}; index it again ({REBUILD})") from None
    if not (folder / SEARCH).is_file():
        raise StoreError(
            f"the store {folder} has no {SEARCH}: it is not a search store (test.py's descriptor store, or an "
            f"indexing that did not finish); index the images into another folder ({REBUILD} --store NEW)"
        )
    if not store.complete():
        raise StoreError(
            f"the store {folder} lacks {len(store.missing())} of {store.shards} shards (an interrupted "
            f"indexing): run the same {REBUILD} command again to encode them"
        )
    _warn_of_changed_images(store)
    try:
        vecs, unreadable = store.load(), store.skipped()
    except StoreDamaged as err:
        raise StoreError(f"{err.problem}; index it again ({REBUILD})") from None
    except DataError as err:
        raise StoreError(f"{err}; index it again ({REBUILD})") from None
    if not _all_finite(vecs):
        raise StoreError(f"the store {folder} holds NaN or infinite values: it is damaged; index it again ({REBUILD})")
    record = search_record(folder)
    settings: StoreSettings = {**store.key.record(), "source": record["source"], "dim": store.dim}
    if "dba" in record:
        settings["dba"] = record["dba"]
    if "ivfpq" in record:
        settings["ivfpq"] = record["ivfpq"]
    if FILES in record:
        settings[FILES] = record[FILES]
    return vecs, store.images, settings, unreadable


def _all_finite(vecs: np.ndarray, block: int = 65536) -> bool:
    """Whether every value of D x N ``vecs`` is finite, checked ``block`` images at a time (at
    once, the check of a 1M x 2048 store held 2 GB of booleans)."""
    return all(np.isfinite(vecs[:, start : start + block]).all() for start in range(0, vecs.shape[1], block))


def search_record(folder: Path) -> SearchRecord:
    """A store's ``search.json``, every field checked (what a command reports of a store
    without reading its descriptors).

    Args:
        folder: the store's folder.

    Returns:
        The record: the teacher's name, DBA, IVF-PQ index and the files' sha256.

    Raises:
        StoreError: when it cannot be read or a field is not what aml writes.
        NoAccess: when this user may not read it.
    """
    path = folder / SEARCH
    try:
        record = json.loads(read_bounded(path))
    except PermissionError as err:  # another user's store: not damaged, and not to be indexed again
        raise no_access(path, err) from None
    except (OSError, ValueError) as err:
        raise StoreError(f"cannot read {path} ({err}): the store is damaged; index it again ({REBUILD})") from None
    if not isinstance(record, dict):
        raise StoreError(f"{path} holds a {type(record).__name__}, not a store's record; index it again ({REBUILD})")
    dba, files = record.get("dba"), record.get(FILES, {})
    problems = {
        "source": None if isinstance(record.get("source"), str) else f"must be a string, got {record.get('source')!r}",
        "dba": None if dba is None or _dba_problem(dba) is None else _dba_problem(dba),
        FILES: None
        if isinstance(files, dict)
        and all(isinstance(v, str) for v in files.values())
        and set(files) <= {WHITENING, DBA, INDEX}
        else f"must map the store's {WHITENING}, {DBA} or {INDEX} to sha256 digests, got {str(files)[:80]}",
        "ivfpq": None if isinstance(record.get("ivfpq", {}), dict) else "must be an object",
    }
    for name, problem in problems.items():
        if problem:
            raise StoreError(
                f"{path}: {name}: {problem}; it was edited or is damaged: index the store again ({REBUILD})"
            )
    return cast(SearchRecord, record)  # every field checked


def _dba_problem(dba: Any) -> Optional[str]:
    if not isinstance(dba, dict):
        return f"must be {{'k': K, 'alpha': A}}, got {dba!r}"
    return POSITIVE_INT.problem(dba.get("k")) or NONNEGATIVE_FLOAT.problem(dba.get("alpha"))


def _verify_files(folder: Path, settings: StoreSettings) -> None:
    """Check the store's whitening, DBA and index files against the sha256 that ``search.json``
    records: each one there must be this store's own (not replaced, nor copied from another
    store). A store indexed before aml recorded them is read with a warning."""
    present = [name for name in (WHITENING, DBA, INDEX) if (folder / name).exists()]
    listed = settings.get(FILES)
    if listed is None:
        if present:
            log.warning(
                ">> the store %s was indexed before aml recorded the sha256 of its files, so a %s replaced or "
                "copied from another store would go unnoticed; index it again (%s) to have them checked",
                folder,
                " or ".join(present),
                REBUILD,
            )
        return
    for name in sorted(set(present) | set(listed) | ({DBA} if settings.get("dba") else set())):
        path = index_path(folder, listed.get(INDEX)) if name == INDEX else folder / name
        if name not in listed:
            raise StoreError(
                f"{path} was not written by this store's indexing ({SEARCH} does not list it): it belongs to "
                f"another store; delete it, or index again ({REBUILD})"
            )
        if not path.is_file():
            raise StoreError(
                f"{path} is missing, which {SEARCH} lists: the store is damaged; index it again ({REBUILD})"
            )
        if file_sha256(path) != listed[name]:
            raise StoreError(
                f"{path} is not the file this store's indexing wrote (its sha256 differs from the one in "
                f"{SEARCH}): it was replaced or copied from another store; index it again ({REBUILD})"
            )


def _augmented(folder: Path, shape: Tuple[int, int]) -> np.ndarray:
    """The store's DBA descriptors (``dba.npy``), checked against its shape."""
    path = folder / DBA
    try:
        vecs = load_npy(path)
    except (ValueError, OSError, EOFError) as err:
        raise StoreError(
            f"cannot read {path} ({err}), which {SEARCH} names: the store is damaged; index it again "
            f"({REBUILD} --dba K)"
        ) from None
    if vecs.shape != shape or vecs.dtype.kind != "f" or not _all_finite(vecs):
        raise StoreError(
            f"{path} holds {vecs.dtype} descriptors of shape {vecs.shape}, not the store's finite "
            f"{shape}: the store is damaged; index it again ({REBUILD} --dba K)"
        )
    return np.ascontiguousarray(vecs.T, dtype=np.float32).T  # rows, as faiss takes them without another copy


def _legacy_descriptors(folder: Path) -> Tuple[np.ndarray, List[str], StoreSettings]:
    """The same from a store of the older one-file layout (descriptors.npy with its image
    list and settings), which aml.search wrote before it wrote shards (read until
    `LEGACY_LAYOUT_READ_UNTIL`, with a warning)."""
    path = folder / LEGACY_FILES[0]
    settings = feature_file_settings(path)
    if settings is None:
        if not folder.is_dir():
            raise StoreError(f"the store {folder} does not exist; build it with: {REBUILD}")
        if not path.exists():
            raise StoreError(f"{folder} is not a store (it holds no {MANIFEST}); build one with: {REBUILD}")
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
    _check_legacy_settings(settings, f"{path}.json")
    try:
        vecs = load_npy(path)
    except (ValueError, OSError, EOFError) as err:
        raise StoreError(f"cannot read {path} ({err}): the store is damaged; index it again ({REBUILD})") from None
    if vecs.ndim != 2 or vecs.dtype.kind != "f" or vecs.shape[0] != settings.get("dim"):
        raise StoreError(
            f"{path} holds a {vecs.dtype} array of shape {vecs.shape}, not {settings.get('dim')}-d float "
            f"descriptors as its settings say: the store is damaged; index it again ({REBUILD})"
        )
    if not _all_finite(vecs):
        raise StoreError(f"{path} holds NaN or infinite values: the store is damaged; index it again ({REBUILD})")
    images = (folder / LEGACY_FILES[1]).read_text(errors="surrogateescape").splitlines()
    if len(images) != vecs.shape[1]:
        raise StoreError(
            f"{path} holds {vecs.shape[1]} descriptors but its image list {len(images)} "
            f"images: the store is damaged; index it again ({REBUILD})"
        )
    return vecs, images, cast(StoreSettings, settings)  # the fields a query reads checked


def _check_legacy_settings(settings: Dict[str, Any], source: str) -> None:
    """The fields of a one-file store's settings that a query reads, each of its type and range."""
    try:
        DescriptorKey.from_record(settings, source)
    except DataError as err:
        raise StoreError(f"{err}: index it again ({REBUILD})") from None
    dim = settings["dim"]
    problems = {
        "dim": OUTPUT_DIM.problem(dim),
        "network": None if isinstance(settings["network"], str) else "must be a string",
        "source": None if isinstance(settings["source"], str) else "must be a string",
    }
    for name, problem in problems.items():
        if problem:
            raise StoreError(f"{source}: {name}: {problem}; it was edited: index the store again ({REBUILD})")


def _store_whitening(folder: Path, dim: int) -> Optional[Whitening]:
    """The store's whitening (None without one), checked: of the store's dimension, finite."""
    path = folder / WHITENING
    if not path.is_file():
        return None
    try:
        return read_whitening_file(path, dim)
    except WhiteningError as err:
        raise StoreError(f"{str(err).split('; ')[0]}; index the store again ({REBUILD} -w SET)") from None


#: rows moved at once when a store's skipped columns are dropped in place
MOVED_ROWS_BYTES = 64 << 20


def _kept_columns(vecs: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``vecs[:, kept]`` (``kept`` ascending), in place when ``vecs`` is a view of rows, as a
    store's descriptors are: fancy indexing made a second copy of the whole store."""
    rows = vecs.T
    if not rows.flags.c_contiguous or not rows.flags.writeable:
        return vecs[:, kept]
    step = max(1, MOVED_ROWS_BYTES // max(rows.strides[0], 1))
    for start in range(0, len(kept), step):  # forward: each block lands at or before where it was read
        part = kept[start : start + step]
        rows[start : start + len(part)] = rows[part]
    return rows[: len(kept)].T


def open_database(folder: PathLike) -> SearchDatabase:
    """Load a store's database for search: its descriptors, whitened and augmented as the store was indexed.

    Either layout is read; every file is checked (the manifest's fields, each shard, the
    whitening, DBA and index files against the sha256 that ``search.json`` records, the
    whitening's values and shape). The descriptors are whitened when the store has a
    whitening (and augmented with DBA when it was indexed so); images that could not be read
    when it was indexed (``skip_bad``) are left out.

    Args:
        folder: the store's folder.

    Returns:
        The database.

    Raises:
        StoreError: naming what is missing, damaged, edited or of another store, with the fix,
            or when the folder was indexed again while it was being read.

    Examples:
        >>> from aml.search import open_database
        >>> database = open_database("photos.store")  # doctest: +SKIP
        >>> database.vecs.shape, database.settings["network"]  # doctest: +SKIP
        ((512, 10000), 'retrievalSfM120k-vgg16-gem')
    """
    folder = Path(folder)
    identity = folder_identity(folder)  # an indexing swaps in a new folder: nothing may mix the two
    if (folder / MANIFEST).is_file():
        vecs, images, settings, unreadable = _sharded_descriptors(folder)
    else:
        (vecs, images, settings), unreadable = _legacy_descriptors(folder), []
    _verify_files(folder, settings)
    whitening = _store_whitening(folder, vecs.shape[0])
    if settings.get("dba"):
        vecs = _augmented(folder, vecs.shape if whitening is None else (whitening[1].shape[0], vecs.shape[1]))
    elif whitening is not None:
        try:
            vecs = whitened_float32(vecs, whitening, f"store {folder}'s database")
        except WhiteningError as err:
            raise StoreError(f"{err}: index the store again ({REBUILD})") from None
    if unreadable:  # their columns are zeros, which whitening or DBA would turn into answers
        log.info(">> %d images of %s could not be read when it was indexed: not searched", len(unreadable), folder)
        kept = np.setdiff1d(np.arange(len(images)), unreadable)
        if not len(kept):
            raise StoreError(f"none of the {len(images)} images of the store {folder} could be read: nothing to search")
        vecs, images = _kept_columns(vecs, kept), [images[i] for i in kept]
    manifest = file_sha256(folder / MANIFEST) if (folder / MANIFEST).is_file() else None  # for build_ivfpq
    if folder_identity(folder) != identity:
        raise StoreError(
            f"the store {folder} was indexed again while it was being opened (its files would mix two "
            "indexings): open it again"
        )
    return SearchDatabase(  # float32 as it is (a view of rows: faiss adds them without another copy)
        folder, np.asarray(vecs, dtype=np.float32), images, settings, whitening, manifest, identity
    )
