"""The sharded descriptor store: descriptors of a large image set (the 1M distractors) in
fixed-size shards on disk, written once per network and read block by block.

A store is a folder::

    manifest.json          image count, shard size, dtype, dimension, network fingerprint,
                           extraction settings, sha1 of the image list, sha256 of each
                           shard's descriptors, and a digest of all these fields
    images.txt             the image list, one path per line
    shard_00000.npy        rows = images [0, shard_size), float16 or float32, N_k x D
    shard_00000.json       the shard's skipped (unreadable) images and a digest of its images'
                           sizes and modification times, written before the .npy
    skipped.txt            every skipped image (with skip_bad), next to the shards

Each shard is written atomically and never replaced (when two processes encode the same
shard, the first one written stays), so a shard file is always whole and an interrupted
extraction restarts at the first missing shard. A manifest that does not match the network,
the settings or the image list is refused: descriptors of one network are never mixed with
another's. Every field of a manifest is checked when it is read, and its digest tells an
edited manifest; each shard is checked against its sha256 when a store first reads its file (again when
the file is replaced), so a shard replaced or copied from another store is refused, naming it. Stores written before aml
recorded these hashes are read with a warning. Images changed since their shard was encoded
(a distractor downloaded again, an unreadable one repaired) are found when the store is filled,
and the stale shards are named: their descriptors are of the old images. Under torchrun the missing shards are dealt
out to the ranks (shard k to rank k mod size); no rank waits for another until the last
shard is written.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Final, Iterator, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np

from aml.data.paths import below_common_folder
from aml.descriptors.extraction import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.key import DescriptorKey, KeyRecord, images_digest_as_listed
from aml.networks.checkpoint import OUTPUT_DIM
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.utils.atomic import atomic_write, file_stamp, folder_lock, lock_beside, make_folder
from aml.utils.bounds import NONNEGATIVE_INT, POSITIVE_INT, digits
from aml.utils.distributed import barrier, current_world, from_main, warn_once
from aml.utils.plain_files import load_npy
from aml.utils.errors import ConfigError, DataError, MissingFile, lookup, no_access
from aml.utils.text_files import line_list, read_bounded, read_line_list

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
MANIFEST = "manifest.json"
IMAGE_LIST = "images.txt"
HASHES: Final = "shard_sha256"  # the manifest's list of each shard's sha256 (None: not recorded yet)
DIGEST: Final = "digest"  # the manifest's sha256 of its other fields
IMAGES_KEY: Final = "images_key"  # a shard's record of its images' sizes and times (`images_digest`)
HEX = "0123456789abcdef"
REENCODE = "delete the store to encode it again"
SHARD_FIX = "delete it and run the same command again to encode it again"
UNVERIFIED_FIX = "encode it again into a new folder to have them checked"


class StoreMismatch(DataError):
    """A store folder holds descriptors of another network, settings or image list."""


class StoreDamaged(DataError):
    """A file of a store that is damaged, was edited, or is not this store's own.

    Attributes:
        problem: what is wrong, naming the file (a caller with another fix adds its own).
    """

    def __init__(self, problem: str, fix: str = REENCODE):
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix

    def __reduce__(self):  # as it was made: handed from rank 0 to the others, it added its default fix again
        return type(self), (self.problem, self.fix)


class StoreKeyRecord(KeyRecord):
    """A `StoreKey` as the manifest's fields: the descriptors' key, the encoder's name, the
    dtype and the rows per shard."""

    network: str
    dtype: str
    shard_size: int


class Manifest(StoreKeyRecord):
    """What a store's ``manifest.json`` says it holds: its key's fields, the format version,
    the number of images, the descriptors' dimension and the sha1 of the image list (the file
    adds each shard's sha256 and a digest of the other fields)."""

    version: int
    count: int
    dim: int
    images_sha1: str


class StoredManifest(Manifest, total=False):
    """A manifest as the file holds it: with each shard's sha256 (None: not recorded yet) and
    the sha256 of its other fields (a manifest written before aml recorded them has neither)."""

    shard_sha256: List[Optional[str]]
    digest: str


@dataclass(frozen=True)
class StoreKey:
    """What a store holds: descriptors of one `DescriptorKey`, in shards of
    ``shard_size`` rows of ``dtype`` (all must match to reuse a store)."""

    descriptors: DescriptorKey
    network: str  # the encoder's name, for people
    dtype: str = "float16"
    shard_size: int = 16384

    def record(self) -> StoreKeyRecord:
        """The manifest's key fields (flat, as stores have always been written)."""
        return {
            **self.descriptors.record(),
            "network": self.network,
            "dtype": self.dtype,
            "shard_size": self.shard_size,
        }

    @classmethod
    def from_manifest(cls, manifest: Dict[str, Any], source: str) -> "StoreKey":
        """The key a manifest holds, each field checked.

        Args:
            manifest: the manifest's fields.
            source: what the error names (the manifest file).

        Returns:
            The key.

        Raises:
            DataError: naming ``source`` and the field, when a field is missing, not of its
                type or out of its range.
        """
        try:
            descriptors = DescriptorKey.from_record(manifest, source)
        except DataError as err:
            raise StoreDamaged(str(err)) from None
        if descriptors is None:
            raise StoreDamaged(f"{source} has no fingerprint or image_size: it was edited or is damaged")
        network, dtype, shard_size = (manifest.get(name) for name in ("network", "dtype", "shard_size"))
        problems = {
            "network": None if isinstance(network, str) else f"must be a string, got {network!r}",
            "dtype": None
            if isinstance(dtype, str) and dtype in DTYPES
            else f"must be one of {', '.join(DTYPES)}, got {dtype!r}",
            "shard_size": POSITIVE_INT.problem(shard_size),
        }
        _refuse(problems, source)
        return cls(descriptors, str(network), str(dtype), int(shard_size or 0))

    def tag(self) -> str:
        """A short hash of the key, for folder names; the same text as it has always been
        hashed, so stores already encoded (hours of 1M distractors) are found again."""
        d = self.descriptors
        text = (
            f"StoreKey(fingerprint={d.fingerprint!r}, network={self.network!r}, image_size={d.image_size!r}, "
            f"scales={d.scales!r}, msp={d.msp!r}, dtype={self.dtype!r}, shard_size={self.shard_size!r}, "
            f"pixels={d.pixels!r})"
        )
        return hashlib.sha1(text.encode()).hexdigest()[:8]


def _refuse(problems: Dict[str, Optional[str]], source: str) -> None:
    """Raise the first of ``problems`` (field -> what is wrong, or None) as one line naming ``source``."""
    for name, problem in problems.items():
        if problem:
            raise StoreDamaged(f"{source}: {name}: {problem}; the file was edited or is damaged")


def _list_sha1(images: Sequence[str]) -> str:
    return hashlib.sha1(line_list(images)).hexdigest()


def _write_json(path: Path, record: Mapping[str, object]) -> None:
    atomic_write(path, lambda out: out.write(json.dumps(record, indent=1, sort_keys=True).encode()))


def _read_json(path: Path, fix: str = REENCODE) -> Any:
    """A JSON file of a store, or a StoreDamaged naming it."""
    try:
        return json.loads(read_bounded(path))
    except FileNotFoundError:
        raise
    except PermissionError as err:
        raise no_access(path, err) from None
    except (OSError, ValueError) as err:
        raise StoreDamaged(f"cannot read {path} ({err}): it is damaged", fix) from None


def descriptors_sha256(array: np.ndarray) -> str:
    """The sha256 of descriptors as a store records a shard's: their bytes, row-major.

    Args:
        array: an n x D shard.

    Returns:
        64 hex digits.

    Examples:
        >>> import numpy as np
        >>> from aml.descriptors.store import descriptors_sha256
        >>> descriptors_sha256(np.zeros((2, 3), np.float16))[:16]
        '15ec7bf0b50732b4'
        >>> descriptors_sha256(np.eye(2, 3, dtype=np.float16)) == descriptors_sha256(np.zeros((2, 3), np.float16))
        False
    """
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _manifest_digest(manifest: Mapping[str, object]) -> str:
    fields = {name: value for name, value in manifest.items() if name != DIGEST}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _hashes_problem(hashes: Any, shards: int) -> Optional[str]:
    if not isinstance(hashes, list) or len(hashes) != shards:
        return f"must be a list of {shards} sha256 digests (one per shard), got {str(hashes)[:80]}"
    for value in hashes:
        if value is not None and not (isinstance(value, str) and len(value) == 64 and set(value) <= set(HEX)):
            return f"must hold sha256 digests, got {value!r}"
    return None


def read_manifest(folder: Path) -> Tuple[StoredManifest, StoreKey]:
    """A store's manifest, checked: valid JSON of an object, its digest (an edited manifest
    is refused), and every field's type and range.

    Args:
        folder: the store's folder.

    Returns:
        The manifest's fields and the key they hold.

    Raises:
        FileNotFoundError: without ``manifest.json``.
        DataError: naming the file and what is wrong in it.
    """
    path = folder / MANIFEST
    source = str(path)
    manifest = _read_json(path)
    if not isinstance(manifest, dict):
        raise StoreDamaged(f"{source} holds a {type(manifest).__name__}, not a store's manifest")
    if DIGEST in manifest and manifest[DIGEST] != _manifest_digest(manifest):
        raise StoreDamaged(
            f"{source} was edited after aml wrote it (its fields do not match its digest), so the descriptors "
            "are not what it now says"
        )
    key = StoreKey.from_manifest(manifest, source)
    version, dim, count = manifest.get("version"), manifest.get("dim"), manifest.get("count")
    problems = {
        "version": None if version == FORMAT_VERSION else f"must be {FORMAT_VERSION}, got {version!r}",
        "dim": OUTPUT_DIM.problem(dim),
        "count": NONNEGATIVE_INT.problem(count),
        "images_sha1": None if isinstance(manifest.get("images_sha1"), str) else "must be a string",
    }
    _refuse(problems, source)
    if HASHES in manifest:
        _refuse({HASHES: _hashes_problem(manifest[HASHES], -(-int(count or 0) // key.shard_size))}, source)
    if DIGEST not in manifest and HASHES in manifest:  # aml writes both since it writes either
        raise StoreDamaged(
            f"{source} was edited after aml wrote it (its digest is gone), so the descriptors may not be what it "
            "now says"
        )
    return cast(StoredManifest, manifest), key  # every field checked


def store_differences(folder: Path, images: Sequence[str], key: StoreKey) -> List[str]:
    """How the store in ``folder`` differs from ``images`` encoded as ``key``: its images (in
    any order, below any common folder), teacher weights, image size or scales (what it
    describes, not how it was computed: the pixel path, the dtype); [] when it does not, or
    holds no readable manifest.

    Args:
        folder: a store's folder.
        images: the images (absolute paths, in order).
        key: how they would be encoded.

    Returns:
        The differences, in words: the store's side ("other teacher weights", "image size 64").
    """
    try:
        manifest, found = read_manifest(folder)
    except (OSError, DataError):  # none, or damaged: nothing it describes is known
        return []
    theirs, ours = found.descriptors, key.descriptors
    named = {
        f"other images (it holds {manifest['count']})": _other_images(folder, manifest, images),
        "other teacher weights": theirs.fingerprint != ours.fingerprint,
        f"image size {theirs.image_size:g}": theirs.image_size != ours.image_size,
        f"scales {list(theirs.scales)}": tuple(theirs.scales) != tuple(ours.scales),
    }
    return [words for words, differs in named.items() if differs]


def _other_images(folder: Path, manifest: StoredManifest, images: Sequence[str]) -> bool:
    """Whether the store lists other images than ``images``, in any order, below any folder
    (the same names below another folder are the same images moved there, unless the images
    the store lists are still in place with other sizes: another day's ``DSC_0001.jpg``)."""
    if manifest["images_sha1"] == _list_sha1(images):
        return False
    try:
        listed = read_line_list((folder / IMAGE_LIST).read_bytes())
    except OSError:
        return True
    theirs, ours = below_common_folder(listed), below_common_folder(images)
    if sorted(theirs) != sorted(ours):
        return True
    now = dict(zip(ours, images, strict=True))
    return not same_images_moved(listed, [now[name] for name in theirs])


def same_images_moved(listed: Sequence[str], images: Sequence[str]) -> bool:
    """Whether ``images`` are the images ``listed``, in order, moved below another folder: the
    same names below each list's common folder, and no listed image still in place with
    another size than its namesake (another day's ``DSC_0001.jpg``).

    Examples:
        >>> from aml.descriptors.store import same_images_moved
        >>> same_images_moved(["/old/x/1.jpg", "/old/y/2.jpg"], ["/new/x/1.jpg", "/new/y/2.jpg"])
        True
    """
    if len(listed) != len(images) or below_common_folder(listed) != below_common_folder(images):
        return False
    return not any(_other_sizes(old, new) for old, new in zip(listed, images, strict=True))


def _other_sizes(old: str, new: str) -> bool:
    """Whether the image the store listed as ``old`` is still there with another size than ``new``."""
    if old == new:
        return False
    try:
        return os.stat(old).st_size != os.stat(new).st_size
    except OSError:  # moved away, or the new one unreadable: nothing says they differ
        return False


class DescriptorStore:
    """One store folder for ``images`` encoded as ``key`` says (see the module docstring)."""

    def __init__(self, folder: Path, images: Sequence[str], key: StoreKey, dim: int):
        lookup(DTYPES, key.dtype, "descriptor store dtype")
        if key.shard_size < 1:
            raise ConfigError(f"descriptor store shard size must be positive, got {key.shard_size}")
        self.folder, self.images, self.key, self.dim = Path(folder), [str(i) for i in images], key, dim
        # the paths the store's list holds, where its images were moved below another folder since
        self.listed: Optional[List[str]] = None
        self._hashes: Optional[List[Optional[str]]] = None  # the manifest's, read when first needed
        self._verified: Dict[int, Tuple[int, int, int]] = {}  # shard -> its file's identity when its hash matched

    # -- layout ---------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def shards(self) -> int:
        return -(-self.count // self.key.shard_size)

    def shard_rows(self, k: int) -> range:
        """Image indices held by shard ``k``."""
        start = k * self.key.shard_size
        return range(start, min(start + self.key.shard_size, self.count))

    def shard_path(self, k: int) -> Path:
        return self.folder / f"shard_{k:05d}.npy"

    def _skip_path(self, k: int) -> Path:
        return self.folder / f"shard_{k:05d}.json"

    def manifest(self) -> Manifest:
        """The manifest's fields that say what the store holds (all must match to reuse it)."""
        return {
            **self.key.record(),
            "version": FORMAT_VERSION,
            "count": self.count,
            "dim": self.dim,
            "images_sha1": _list_sha1(self.listed or self.images),
        }

    def _write_manifest(self, hashes: List[Optional[str]]) -> None:
        record: StoredManifest = {**self.manifest(), HASHES: hashes}
        record[DIGEST] = _manifest_digest(record)
        _write_json(self.folder / MANIFEST, record)

    # -- creating -------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path, images: Sequence[str], key: StoreKey, dim: int) -> "DescriptorStore":
        """The store of ``images`` in ``folder``: its folder and manifest created, or an
        existing one checked to describe this network, these settings and this image list.

        Rank 0 writes; the other ranks wait and check.

        Args:
            folder: the store's folder.
            images: the images it holds, in row order.
            key: what its descriptors are.
            dim: their dimension.

        Returns:
            The store (its missing shards still to encode: `fill`).

        Raises:
            StoreMismatch: when the folder holds descriptors of another network, settings or
                image list (it is kept as it is).
            DataError: when its manifest is damaged or was edited.
            InTheWay: when a file stands where the folder goes.
        """
        store = cls(folder, images, key, dim)
        world = current_world()
        if world.is_main:
            store._create_or_check()
        barrier(world)
        if not world.is_main:
            store._check(read_manifest(store.folder)[0])
        return store

    def _create_or_check(self) -> None:
        path = self.folder / MANIFEST
        if path.is_file():
            self._check(read_manifest(self.folder)[0])
            return
        leftovers = sorted(self.folder.glob("shard_*.npy")) if self.folder.is_dir() else []
        if leftovers:
            raise StoreMismatch(
                f"descriptor store {self.folder} holds shards ({leftovers[0].name}, ...) but no "
                "manifest.json, so nothing says which network made them; delete the folder or choose "
                "another"
            )
        make_folder(self.folder)
        atomic_write(self.folder / IMAGE_LIST, lambda out: out.write(line_list(self.images)))
        self._write_manifest([None] * self.shards)

    def _check(self, found: StoredManifest) -> None:
        if self.listed is None and found.get("images_sha1") != _list_sha1(self.images):
            self.listed = self._moved_list()
        wanted: Mapping[str, object] = self.manifest()
        differ = [name for name in wanted if found.get(name) != wanted[name]]
        if not differ:
            return
        what = "; ".join(f"{name}: store {found.get(name)!r}, this run {wanted[name]!r}" for name in differ[:4])
        raise StoreMismatch(
            f"descriptor store {self.folder} was made for other descriptors ({what}); it is kept as "
            "it is: choose another folder, or delete it to extract again"
        )

    def _moved_list(self) -> Optional[List[str]]:
        """The store's list of images where it names ``images`` in order below another folder
        (a data root moved or copied elsewhere), else None."""
        try:
            listed = read_line_list((self.folder / IMAGE_LIST).read_bytes())
        except OSError:
            return None
        if not same_images_moved(listed, self.images):
            return None
        log.info(">> %s lists its images below another folder (moved): reading them where they are now", self.folder)
        return listed

    # -- writing --------------------------------------------------------------------------
    def missing(self) -> List[int]:
        """Shards not written yet (a shard on disk is whole: it was renamed into place)."""
        return [k for k in range(self.shards) if not self.shard_path(k).is_file()]

    def write_shard(self, k: int, vecs: np.ndarray, skipped: Sequence[int] = ()) -> Path:
        """Store shard ``k`` (D x n_k descriptors of its images, a column each, as
        `describe_images` gives them; ``skipped``: their indices in the whole list), as n_k x D
        rows; its skipped list goes first, the array last. A shard on disk is never replaced:
        when another process wrote it first, its files stay (the two are written under a lock
        beside the shard, so that no shard keeps one process's array and another's list)."""
        rows = self.shard_rows(k)
        array = np.asarray(vecs)
        if array.shape != (self.dim, len(rows)):  # one layout: with n_k == D a guess would store it transposed
            raise ValueError(
                f"shard {k} of {self.folder} needs {self.dim} x {len(rows)} descriptors (a column per image), "
                f"got {array.shape}"
            )
        array = array.T
        record = {"skipped": [int(i) for i in skipped], IMAGES_KEY: self._images_key(k)}
        array = np.ascontiguousarray(array, dtype=DTYPES[self.key.dtype])
        path = self.shard_path(k)
        with lock_beside(path):
            if path.is_file():  # another process wrote it first
                return path
            _write_json(self._skip_path(k), record)
            return atomic_write(path, lambda out: np.save(out, array), replace=False)

    def fill(self, encode, skip_bad: bool = False) -> int:
        """Encode and write every missing shard (``encode(images, skipped)`` -> D x n array,
        appending the positions of unreadable images to ``skipped`` when ``skip_bad``);
        under torchrun each rank takes its share. Returns the number of shards this
        process wrote. Ends with every rank waiting for the others and rank 0 writing
        skipped.txt and the shards' hashes (`record_hashes`).

        Raises:
            StoreMismatch: naming the files of the shards whose images changed since they were
                encoded (`stale_shards`), before anything is encoded.
        """
        world = current_world()
        if world.is_main:
            self._refuse_stale()
            self._forget_missing_hashes()
        barrier(world)
        missing = from_main(self.missing(), world)  # dealt evenly: by k mod N, a rank got all of a half-done store's
        todo = missing[world.rank :: world.size]
        if todo:
            log.info(
                ">> %s: %d of %d shards to encode (this process: %d)",
                self.folder.name,
                len(missing),
                self.shards,
                len(todo),
            )
        for k in todo:
            rows = self.shard_rows(k)
            skipped: List[int] = []
            vecs = encode([self.images[i] for i in rows], skipped if skip_bad else None)
            self.write_shard(k, vecs, [rows.start + i for i in skipped])
        barrier(world)
        if world.is_main:
            self._write_skipped_list()
            self.record_hashes()
        barrier(world)
        self._hashes = None  # the manifest's, as rank 0 wrote them
        return len(todo)

    def _images_key(self, k: int) -> str:
        """A digest of the paths (as the store lists them), sizes and modification times of
        shard ``k``'s images."""
        rows = self.shard_rows(k)
        images = [self.images[i] for i in rows]
        listed = images if self.listed is None else [self.listed[i] for i in rows]  # moved: as recorded
        return images_digest_as_listed(images, listed)

    def stale_shards(self) -> List[int]:
        """Written shards whose images changed since they were encoded: their sizes or
        modification times differ from the ones the shard recorded; for a shard written before
        aml recorded them, an image modified (or its inode changed, as ``cp -p`` does) after the
        shard's file, or gone. Every image of a written shard is looked at (a stat each)."""
        stale = []
        for k in range(self.shards):
            if not self.shard_path(k).is_file():
                continue
            try:
                record = _read_json(self._skip_path(k), SHARD_FIX)
            except FileNotFoundError:
                record = {}
            recorded = record.get(IMAGES_KEY) if isinstance(record, dict) else None
            changed = self._edited_after_written(k) if recorded is None else recorded != self._images_key(k)
            if changed:
                stale.append(k)
        return stale

    def _edited_after_written(self, k: int) -> bool:
        written = self.shard_path(k).stat().st_mtime_ns
        for i in self.shard_rows(k):
            try:
                found = os.stat(self.images[i])
            except OSError:
                return True
            if max(found.st_mtime_ns, found.st_ctime_ns) > written:
                return True
        return False

    def _refuse_stale(self) -> None:
        stale = self.stale_shards()
        if not stale:
            return
        files = [f"{self.shard_path(k).name} and {self._skip_path(k).name}" for k in stale[:3]]
        rows = self.shard_rows(stale[0])
        raise StoreMismatch(
            f"descriptor store {self.folder}: the images of {len(stale)} shard(s) changed since they were "
            f"encoded (images {rows.start + 1} to {rows.stop} of {IMAGE_LIST}, from {self.images[rows.start]}, "
            "for the first), so their descriptors are of the old images; delete "
            f"{', '.join(files)}{', ...' if len(stale) > 3 else ''} and run the same command again to encode "
            "them again (or delete the store)"
        )

    def _forget_missing_hashes(self) -> None:
        """Drop the recorded sha256 of shards that are missing (deleted to be encoded again):
        the shard encoded in their place gets its own."""
        with folder_lock(self.folder, wait=True):
            manifest, _ = read_manifest(self.folder)
            hashes, missing = manifest.get(HASHES), self.missing()
            if hashes is None or not any(hashes[k] is not None for k in missing):
                return
            for k in missing:
                hashes[k] = None
            self._write_manifest(hashes)
            self._hashes = None

    def record_hashes(self) -> None:
        """Record in the manifest the sha256 of every shard whose hash it lacks (each read as
        it is on disk: a shard never changes once written). A manifest written before aml
        recorded hashes is left as it is: its shards stay unverified. The store's lock is held
        meanwhile, so that two processes filling one store keep each other's hashes."""
        with folder_lock(self.folder, wait=True):
            manifest, _ = read_manifest(self.folder)
            hashes = manifest.get(HASHES)
            if hashes is None or all(h is not None for h in hashes):
                return
            for k in range(self.shards):
                if hashes[k] is None and self.shard_path(k).is_file():
                    hashes[k] = descriptors_sha256(self._load_shard(k))
            self._write_manifest(hashes)
            self._hashes = None

    def _write_skipped_list(self) -> None:
        skipped = self.skipped()
        path = self.folder / "skipped.txt"
        if skipped:  # said by the caller (`warn_of_skipped`): this folder may be a staging one, renamed next
            atomic_write(path, lambda out: out.write(line_list([self.images[i] for i in skipped])))

    # -- reading --------------------------------------------------------------------------
    def complete(self) -> bool:
        return not self.missing()

    def skipped(self) -> List[int]:
        """Indices of the images that could not be read (their rows are zero).

        Raises:
            DataError: naming a shard's skipped list that is damaged or names other images.
        """
        found: List[int] = []
        for k in range(self.shards):
            path = self._skip_path(k)
            if not path.is_file():
                continue
            record = _read_json(path, SHARD_FIX)
            rows = self.shard_rows(k)
            listed = record.get("skipped") if isinstance(record, dict) else None
            if not isinstance(listed, list) or not all(type(i) is int and i in rows for i in listed):
                raise StoreDamaged(
                    f"{path} does not list skipped images of its shard (indices in [{rows.start}, {rows.stop})): "
                    "it was edited or is damaged",
                    "delete it and its shard, and run the same command again to encode it again",
                )
            found += listed
        return sorted(found)

    def hashes(self) -> List[Optional[str]]:
        """Each shard's sha256 as the manifest records it (None: not recorded)."""
        if self._hashes is None:
            manifest, _ = read_manifest(self.folder)
            self._hashes = list(manifest.get(HASHES) or [None] * self.shards)
        return self._hashes

    def unverified(self) -> List[int]:
        """Shards with no recorded hash (a store written before aml recorded them): read unchecked."""
        return [k for k, digest in enumerate(self.hashes()) if digest is None]

    def warn_unverified(self) -> None:
        """Log a warning when some shards cannot be checked (`unverified`)."""
        unverified = self.unverified()
        if unverified:
            log.warning(
                ">> descriptor store %s: %d of %d shards have no sha256 in its manifest (it was written "
                "before aml recorded them), so a shard replaced or copied from another store would go "
                "unnoticed; %s",
                self.folder,
                len(unverified),
                self.shards,
                UNVERIFIED_FIX,
            )

    def _load_shard(self, k: int) -> np.ndarray:
        path = self.shard_path(k)
        if not path.is_file():
            raise MissingFile(
                f"descriptor store {self.folder}: {path.name} is missing (the extraction did not "
                "finish); run the same command again to encode the missing shards"
            )
        try:
            array = load_npy(path)
        except (ValueError, OSError, EOFError) as err:
            raise StoreDamaged(
                f"descriptor store {self.folder}: {path.name} is not a readable .npy array ({err})", SHARD_FIX
            ) from err
        rows = self.shard_rows(k)
        if array.shape != (len(rows), self.dim) or array.dtype != DTYPES[self.key.dtype]:
            raise StoreDamaged(
                f"descriptor store {self.folder}: {path.name} holds {array.shape} {array.dtype}, the "
                f"manifest says {len(rows)} x {self.dim} {self.key.dtype}",
                SHARD_FIX,
            )
        return array

    def read_shard(self, k: int) -> np.ndarray:
        """Shard ``k`` as an n_k x D array, checked against the manifest: its shape, dtype and
        sha256 (hashed once per file: read again unchanged, it is not hashed again).

        Raises:
            FileNotFoundError: when it is missing.
            DataError: naming the shard, when it is damaged, of another shape, or not the
                shard this store wrote (replaced, or copied from another store).
        """
        stamp = file_stamp(self.shard_path(k))
        array = self._load_shard(k)
        expected = self.hashes()[k]
        if expected is None or self._verified.get(k) == stamp:  # the file this store checked already
            return array
        if descriptors_sha256(array) != expected:
            raise StoreDamaged(
                f"descriptor store {self.folder}: {self.shard_path(k).name} is not the shard this store "
                "wrote (its descriptors do not match the sha256 in manifest.json): it was replaced or copied "
                "from another store",
                SHARD_FIX,
            )
        self._verified[k] = stamp
        return array

    def blocks(self) -> Iterator[Tuple[int, np.ndarray]]:
        """(first image index, n_k x D shard) for every shard, in order, one in memory at a time."""
        for k in range(self.shards):
            yield self.shard_rows(k).start, self.read_shard(k)

    def load(self) -> np.ndarray:
        """All descriptors as one D x N float32 array (a view of N x D rows: filled a shard at
        a time, it takes the store's memory and one shard's, not three copies)."""
        rows = np.empty((self.count, self.dim), dtype=np.float32)
        for start, block in self.blocks():
            rows[start : start + len(block)] = block
        return rows.T


def open_store(folder: Path, warn: bool = True) -> DescriptorStore:
    """An existing store, as its manifest and image list describe it (to read its shards).

    Every field of the manifest is checked (`read_manifest`), and so is its agreement with
    the image list and the shard files; a store written before aml recorded its shards'
    hashes is opened with a warning (`DescriptorStore.warn_unverified`).

    Args:
        folder: the store's folder.
        warn: log `DescriptorStore.warn_unverified`'s warning (a second opening need not).

    Returns:
        The store.

    Raises:
        DataError: naming the file, when the folder holds no readable manifest and image list,
            or the manifest was edited or does not fit the shard files.
        NoAccess: naming the manifest or the image list, when this user may not read it.
        StoreMismatch: when the image list does not fit the manifest.
    """
    folder = Path(folder)
    try:
        manifest, key = read_manifest(folder)
        images = read_line_list((folder / IMAGE_LIST).read_bytes())
    except PermissionError as err:  # the image list's (the manifest's is read_manifest's): not damaged
        raise no_access(folder / IMAGE_LIST, err) from None
    except OSError as err:
        raise StoreDamaged(f"{folder} is not a readable descriptor store ({err})") from None
    store = DescriptorStore(folder, images, key, int(manifest["dim"]))
    store._check(manifest)  # the image list and the manifest agree
    numbers = {p.name: digits(p.stem[6:]) for p in folder.glob("shard_*.npy")}
    beyond = sorted(name for name, k in numbers.items() if k is None or k >= store.shards)
    if beyond:
        raise StoreDamaged(
            f"{folder / MANIFEST} says {store.shards} shards of {key.shard_size} images, but the folder also "
            f"holds {beyond[0]}: the manifest was edited or the shard comes from another store"
        )
    store._hashes = list(manifest.get(HASHES) or [None] * store.shards)
    if warn:
        store.warn_unverified()
    return store


def warn_of_skipped(store: "DescriptorStore", folder: Optional[Path] = None) -> None:
    """Say how many images a store skipped as unreadable, and where they are listed.

    Args:
        store: the store, encoded.
        folder: where the store is found from now on (a staging folder's final place); None:
            its own folder.
    """
    skipped = store.skipped()
    if skipped:
        where = (folder or store.folder) / "skipped.txt"
        warn_once(log, ">> %d unreadable images skipped, listed in %s", len(skipped), where)  # each rank's alike


def encode_into_store(
    net: ImageRetrievalNet,
    images: Sequence[str],
    folder: Path,
    key: StoreKey,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
) -> DescriptorStore:
    """The store of ``images`` encoded by ``net`` as ``key`` says, its missing shards encoded
    first, each by this process alone (``config``: how; its skip policy decides whether an
    unreadable image is skipped and listed or raises, and whether a store encoded around
    unreadable images before may be used).

    Raises:
        DataError: when the store holds images skipped as unreadable and ``config`` skips none.
        ConfigError: when ``config`` makes other pixels than ``key`` records."""
    key.descriptors.check_pixels(config, net)  # else shards of other pixels would carry the key's name
    store = DescriptorStore.create(folder, images, key, int(net.meta["outputdim"]))
    skipped = store.skipped()
    if skipped and not config.skip_bad:  # the same command stops at an unreadable image, whatever ran before
        raise DataError(
            f"{store.folder} was encoded around {len(skipped)} images that could not be read "
            f"({store.images[skipped[0]]}, ...; listed in {store.folder / 'skipped.txt'}): searching it leaves them "
            "out; pass --skip-bad-images "
            "(skip_bad) to search it so, or repair the images and delete the shards that hold them"
        )
    shard_config = config.but(collective=False)

    def encode(block: List[str], skipped: Optional[List[int]]):
        d = key.descriptors
        return describe_images(
            net,
            block,
            d.image_size,
            d.scales,  # with the network's own multi-scale power, as the queries (the key's is rounded)
            config=shard_config.but(skip_bad=skipped is not None),
            skipped=skipped,
        )

    store.fill(encode, config.skip_bad)
    if current_world().is_main:
        store.warn_unverified()
    return store
