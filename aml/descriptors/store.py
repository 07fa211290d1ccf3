"""The sharded descriptor store: descriptors of a large image set (the 1M distractors) in
fixed-size shards on disk, written once per network and read block by block.

A store is a folder::

    manifest.json          image count, shard size, dtype, dimension, network fingerprint,
                           extraction settings, sha1 of the image list
    images.txt             the image list, one path per line
    shard_00000.npy        rows = images [0, shard_size), float16 or float32, N_k x D
    shard_00000.json       the shard's skipped (unreadable) images, written before the .npy
    skipped.txt            every skipped image (with skip_bad), next to the shards

Each shard is written atomically, so a shard file is always whole and an interrupted
extraction restarts at the first missing shard. A manifest that does not match the network,
the settings or the image list is refused: descriptors of one network are never mixed with
another's. Under torchrun the missing shards are dealt out to the ranks (shard k to rank
k mod size); no rank waits for another until the last shard is written.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from aml.descriptors.extraction import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.key import DescriptorKey
from aml.utils.atomic import atomic_write
from aml.utils.distributed import barrier, current_world
from aml.utils.errors import ConfigError, DataError, lookup

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}


class StoreMismatch(DataError):
    """A store folder holds descriptors of another network, settings or image list."""


@dataclass(frozen=True)
class StoreKey:
    """What a store holds: descriptors of one `DescriptorKey`, in shards of
    ``shard_size`` rows of ``dtype`` (all must match to reuse a store)."""

    descriptors: DescriptorKey
    network: str  # the encoder's name, for people
    dtype: str = "float16"
    shard_size: int = 16384

    def record(self) -> Dict[str, Any]:
        """The manifest's key fields (flat, as stores have always been written)."""
        return dict(self.descriptors.record(), network=self.network, dtype=self.dtype, shard_size=self.shard_size)

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


def _list_sha1(images: Sequence[str]) -> str:
    return hashlib.sha1("".join(f"{image}\n" for image in images).encode()).hexdigest()


def _write_json(path: Path, record: Dict[str, Any]) -> None:
    atomic_write(path, lambda out: out.write(json.dumps(record, indent=1, sort_keys=True).encode()))


class DescriptorStore:
    """One store folder for ``images`` encoded as ``key`` says (see the module docstring)."""

    def __init__(self, folder: Path, images: Sequence[str], key: StoreKey, dim: int):
        lookup(DTYPES, key.dtype, "descriptor store dtype")
        if key.shard_size < 1:
            raise ConfigError(f"descriptor store shard size must be positive, got {key.shard_size}")
        self.folder, self.images, self.key, self.dim = Path(folder), [str(i) for i in images], key, dim

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

    def manifest(self) -> Dict[str, Any]:
        return dict(
            self.key.record(),
            version=FORMAT_VERSION,
            count=self.count,
            dim=self.dim,
            images_sha1=_list_sha1(self.images),
        )

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
        """
        store = cls(folder, images, key, dim)
        world = current_world()
        if world.is_main:
            store._create_or_check()
        barrier(world)
        if not world.is_main:
            store._check(json.loads((store.folder / "manifest.json").read_text()))
        return store

    def _create_or_check(self) -> None:
        path = self.folder / "manifest.json"
        if path.is_file():
            try:
                found = json.loads(path.read_text())
            except ValueError:
                raise StoreMismatch(
                    f"descriptor store {self.folder}: manifest.json is not valid JSON; delete the "
                    "folder to extract again"
                ) from None
            self._check(found)
            return
        leftovers = sorted(self.folder.glob("shard_*.npy")) if self.folder.is_dir() else []
        if leftovers:
            raise StoreMismatch(
                f"descriptor store {self.folder} holds shards ({leftovers[0].name}, ...) but no "
                "manifest.json, so nothing says which network made them; delete the folder or choose "
                "another"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / "images.txt", lambda out: out.write("".join(f"{i}\n" for i in self.images).encode()))
        _write_json(path, self.manifest())

    def _check(self, found: Dict[str, Any]) -> None:
        wanted = self.manifest()
        differ = [name for name in wanted if found.get(name) != wanted[name]]
        if not differ:
            return
        what = "; ".join(f"{name}: store {found.get(name)!r}, this run {wanted[name]!r}" for name in differ[:4])
        raise StoreMismatch(
            f"descriptor store {self.folder} was made for other descriptors ({what}); it is kept as "
            "it is: choose another folder, or delete it to extract again"
        )

    # -- writing --------------------------------------------------------------------------
    def missing(self) -> List[int]:
        """Shards not written yet (a shard on disk is whole: it was renamed into place)."""
        return [k for k in range(self.shards) if not self.shard_path(k).is_file()]

    def write_shard(self, k: int, vecs: np.ndarray, skipped: Sequence[int] = ()) -> Path:
        """Store shard ``k`` (D x n_k or n_k x D descriptors of its images, ``skipped``: their
        indices in the whole list); its skipped list goes first, the array last."""
        rows = self.shard_rows(k)
        array = np.asarray(vecs)
        if array.shape == (self.dim, len(rows)) and array.shape != (len(rows), self.dim):
            array = array.T
        if array.shape != (len(rows), self.dim):
            raise ValueError(f"shard {k} of {self.folder} needs {len(rows)} x {self.dim} descriptors, got {vecs.shape}")
        _write_json(self._skip_path(k), {"skipped": [int(i) for i in skipped]})
        array = np.ascontiguousarray(array, dtype=DTYPES[self.key.dtype])
        return atomic_write(self.shard_path(k), lambda out: np.save(out, array))

    def fill(self, encode, skip_bad: bool = False) -> int:
        """Encode and write every missing shard (``encode(images, skipped)`` -> D x n array,
        appending the positions of unreadable images to ``skipped`` when ``skip_bad``);
        under torchrun each rank takes its share. Returns the number of shards this
        process wrote. Ends with every rank waiting for the others and rank 0 writing
        skipped.txt."""
        world = current_world()
        todo = [k for k in self.missing() if k % world.size == world.rank]
        if todo:
            log.info(
                ">> %s: %d of %d shards to encode (this process: %d)",
                self.folder.name,
                len(self.missing()),
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
        return len(todo)

    def _write_skipped_list(self) -> None:
        skipped = self.skipped()
        path = self.folder / "skipped.txt"
        if skipped:
            atomic_write(path, lambda out: out.write("".join(f"{self.images[i]}\n" for i in skipped).encode()))
            log.warning(">> %s: %d unreadable images skipped, listed in %s", self.folder.name, len(skipped), path)

    # -- reading --------------------------------------------------------------------------
    def complete(self) -> bool:
        return not self.missing()

    def skipped(self) -> List[int]:
        """Indices of the images that could not be read (their rows are zero)."""
        found: List[int] = []
        for k in range(self.shards):
            path = self._skip_path(k)
            if path.is_file():
                found += json.loads(path.read_text())["skipped"]
        return sorted(found)

    def read_shard(self, k: int) -> np.ndarray:
        """Shard ``k`` as an n_k x D array, checked against the manifest."""
        path = self.shard_path(k)
        if not path.is_file():
            raise FileNotFoundError(
                f"descriptor store {self.folder}: {path.name} is missing (the extraction did not "
                "finish); run the same command again to encode the missing shards"
            )
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(
                f"descriptor store {self.folder}: {path.name} is not a readable .npy array ({err}); "
                "delete it and run again to encode it again"
            ) from err
        rows = self.shard_rows(k)
        if array.shape != (len(rows), self.dim) or array.dtype != DTYPES[self.key.dtype]:
            raise DataError(
                f"descriptor store {self.folder}: {path.name} holds {array.shape} {array.dtype}, the "
                f"manifest says {len(rows)} x {self.dim} {self.key.dtype}; delete it and run again"
            )
        return array

    def blocks(self) -> Iterator[Tuple[int, np.ndarray]]:
        """(first image index, n_k x D shard) for every shard, in order, one in memory at a time."""
        for k in range(self.shards):
            yield self.shard_rows(k).start, self.read_shard(k)

    def load(self) -> np.ndarray:
        """All descriptors as one D x N float32 array (small stores and tests)."""
        if not self.count:
            return np.zeros((self.dim, 0), dtype=np.float32)
        return np.concatenate([block for _, block in self.blocks()]).astype(np.float32).T


def open_store(folder: Path) -> DescriptorStore:
    """An existing store, as its manifest and image list describe it (to read its shards).

    Args:
        folder: the store's folder.

    Returns:
        The store.

    Raises:
        DataError: when the folder holds no readable manifest and image list.
        StoreMismatch: when the image list does not fit the manifest.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        images = (folder / "images.txt").read_text().split("\n")[:-1]
        descriptors = DescriptorKey.from_record(manifest)
        if descriptors is None:
            raise KeyError("fingerprint")
        key = StoreKey(descriptors, manifest["network"], manifest["dtype"], manifest["shard_size"])
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{folder} is not a readable descriptor store ({err})") from None
    store = DescriptorStore(folder, images, key, int(manifest["dim"]))
    store._check(manifest)  # the image list and the manifest agree
    return store


def encode_into_store(
    net, images: Sequence[str], folder: Path, key: StoreKey, config: ExtractionConfig = DEFAULT_EXTRACTION
) -> DescriptorStore:
    """The store of ``images`` encoded by ``net`` as ``key`` says, its missing shards encoded
    first, each by this process alone (``config``: how; its skip policy decides whether an
    unreadable image is skipped and listed or raises)."""
    store = DescriptorStore.create(folder, images, key, int(net.meta["outputdim"]))
    shard_config = config.but(collective=False)

    def encode(block: List[str], skipped: Optional[List[int]]):
        d = key.descriptors
        return describe_images(
            net,
            block,
            d.image_size,
            d.scales,
            d.msp,
            config=shard_config.but(skip_bad=skipped is not None),
            skipped=skipped,
        )

    store.fill(encode, config.skip_bad)
    return store
