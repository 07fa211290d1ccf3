"""Asymmetric search outside the benchmarks: a database encoded once by the teacher into a
descriptor store, queried with images encoded by the student.

A store is a folder: the teacher's descriptors as a sharded descriptor store (the one the +1M
protocol uses, `aml.descriptors.store`: ``manifest.json`` with the `DescriptorKey`
and the teacher's name, ``images.txt``, ``shard_*.npy``), ``search.json`` (the teacher as it
was given, for the query-side check, and the DBA applied at indexing; written last), optionally
``whitening.pth`` (the teacher's learned whitening, applied to both sides), ``dba.npy`` (the
descriptors after database-side augmentation, whitened first; searched instead of the shards)
and ``index.faiss`` (an IVF-PQ index).
Stores of the older one-file layout (``descriptors.npy`` with its image list and settings)
are still read.
Search is exact (faiss ``IndexFlatIP`` when faiss is installed, else one matrix product with
torch) unless the store holds an IVF-PQ index. With αQE (``qe``) each query is expanded with
its first search's neighbours among the teacher's descriptors and searched again.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from aml.data.images import BBox
from aml.descriptors.onnx_student import (REEXPORT, OnnxStudentInfo, describe_with_onnx, onnx_session,
                                          read_onnx_metadata, whitening_digest)
from aml.descriptors import DEFAULT_EXTRACTION, DescriptorKey, ExtractionConfig, describe_images, feature_file_settings
from aml.descriptors.store import DescriptorStore, StoreKey, StoreMismatch, encode_into_store, read_store
from aml.evaluation.reranking import DEFAULT_ALPHA, Reranking, database_augmentation, weighted_expansion
from aml.evaluation.whitening import whitenapply
from aml.networks.loading import LoadedNetwork, NetworkSpec, load_spec
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.utils.atomic import atomic_write
from aml.utils.plain_files import load_plain_file, save_plain_file
from aml.utils.errors import DataError

__all__ = ["Store", "StoreError", "build_ivfpq", "build_store", "check_onnx_student", "check_teacher", "list_images",
           "open_store", "query_store", "query_store_onnx"]

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
SEARCH = "search.json"  # what the query side checks: the teacher the store was indexed with
LEGACY_FILES = ("descriptors.npy", "descriptors_img_list.txt", "descriptors.npy.json")  # the one-file layout
SHARD_SIZE = 65536  # images per shard (256 MB of 1024-d float32)
WHITENING = "whitening.pth"
DBA = "dba.npy"  # the descriptors after database-side augmentation (whitened first)
INDEX = "index.faiss"
PQ_CODES = 256  # centroids of each 8-bit sub-quantiser: the fewest training vectors faiss accepts
REBUILD = "python -m aml.search index"
#: what build_store records, and query_store and check_teacher read
STORE_SETTINGS = ("network", "source", "fingerprint", "image_size", "scales", "dim")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class StoreError(DataError):
    """A store is missing, incomplete, or was encoded by another network than the student's teacher.

    A ValueError whose message names what is wrong and how to fix it.

    Examples:
        >>> from aml.search import StoreError, open_store
        >>> try:
        ...     open_store("no/such.store")
        ... except StoreError as err:
        ...     print(str(err).split(";")[0])
        no/such.store is not a complete store (no descriptors.npy with matching settings)
    """


def faiss_or_none():
    """The faiss module when installed (``faiss-cpu`` or ``faiss-gpu``), else None."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


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


@dataclass
class Store:
    """A loaded descriptor store: the teacher's database descriptors, searched with queries.

    `open_store` loads one; `query_store` encodes query images and searches it.

    Attributes:
        folder: the store's folder.
        vecs: D x N float32 database descriptors, whitened when the store has a whitening.
        images: the N database images, in column order.
        settings: how the store was made (network, source, fingerprint, image_size, scales,
            dim, ``dba`` when it was augmented: ``{"k", "alpha"}``, ...).
        whitening: the teacher's learned whitening (m, P), applied to both sides, or None.

    Examples:
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from aml.search import Store, open_store
        >>> store = Store(Path("no/such.store"), np.eye(3, dtype=np.float32), ["a.jpg", "b.jpg", "c.jpg"], {})
        >>> scores, indices = store.search(np.array([[0.0], [0.6], [0.8]]), k=2)
        >>> indices, scores.round(2)
        (array([[2, 1]]), array([[0.8, 0.6]], dtype=float32))
        >>> store = open_store("photos.store")  # doctest: +SKIP
    """

    folder: Path
    vecs: np.ndarray  # D x N, whitened when the store has a whitening
    images: List[str]
    settings: Dict[str, Any]
    whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def search(self, queries: np.ndarray, k: int, prewhitened: bool = False, qe: int = 0,
               qe_alpha: float = DEFAULT_ALPHA) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best database images of each query, best first.

        The queries are whitened like the database when the store has a whitening. The
        search is exact (faiss ``IndexFlatIP`` when faiss is installed, else one matrix
        product with torch) unless the store holds an IVF-PQ index. With ``qe``, each query
        is replaced by αQE with its ``qe`` first results (`aml.evaluation.reranking.weighted_expansion`
        over the store's descriptors) and searched again.

        Args:
            queries: D x Q query descriptors.
            k: results per query (at most the database's size).
            prewhitened: the queries are whitened already (an exported student with the
                store's whitening folded in).
            qe: neighbours of the first search that expand each query (αQE); 0: none.
            qe_alpha: the power of their similarities (0: average query expansion).

        Returns:
            The scores and the database indices, each Q x k, best first.

        Raises:
            StoreError: when the store's IVF-PQ index is damaged or belongs to another store,
                or ``qe`` exceeds the store's size.
        """
        if self.whitening is not None and not prewhitened:
            queries = whitenapply(queries, *self.whitening)
        if qe:
            size = self.vecs.shape[1]
            if qe > size:
                raise StoreError(f"--qe {qe}: the store {self.folder} holds {size} images; give --qe {size} or less")
            _, first = self._nearest(queries, qe)
            neighbours = self.vecs[:, first.T]  # D x qe x Q
            neighbours[:, first.T < 0] = 0  # an IVF-PQ search may find fewer than qe
            queries = weighted_expansion(queries, neighbours, qe_alpha)
        return self._nearest(queries, k)

    def _nearest(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        k = min(k, self.vecs.shape[1])
        faiss = faiss_or_none()
        index_file = self.folder / INDEX
        if faiss is not None and index_file.is_file():
            index = _read_index(index_file, faiss)
            if (index.ntotal, index.d) != self.vecs.shape[::-1]:
                raise StoreError(f"{index_file} indexes {index.ntotal} vectors of {index.d} dimensions but the store "
                                 f"holds {self.vecs.shape[1]} of {self.vecs.shape[0]}: it belongs to another store; "
                                 "delete it or rebuild it with: python -m aml.search index --ivfpq")
            return index.search(np.ascontiguousarray(queries.T, dtype=np.float32), k)
        if faiss is not None:
            index = faiss.IndexFlatIP(self.vecs.shape[0])
            index.add(np.ascontiguousarray(self.vecs.T, dtype=np.float32))
            return index.search(np.ascontiguousarray(queries.T, dtype=np.float32), k)
        scores = torch.from_numpy(np.ascontiguousarray(queries.T, dtype=np.float32)) @ torch.from_numpy(self.vecs)
        top = torch.topk(scores, k, dim=1)
        return top.values.numpy(), top.indices.numpy()


def build_store(teacher: LoadedNetwork, images: Sequence[str],
                folder: PathLike, image_size: int, scales: Sequence[float] = (1,),
                whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                config: ExtractionConfig = DEFAULT_EXTRACTION, reranking: Reranking = Reranking()) -> Path:
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
        raise StoreError(f"--dba {dba}: {len(images)} images to index, so an image has at most {len(images) - 1} "
                         f"neighbours; give --dba {len(images) - 1} or less")
    key = StoreKey(DescriptorKey.of(teacher.net, image_size, scales, config, teacher.fingerprint), teacher.name,
                   "float32", SHARD_SIZE)
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
        record["dba"] = _write_augmented(store, folder, whitening, dba, dba_alpha, config.device)
    atomic_write(folder / SEARCH, lambda out: out.write(json.dumps(record).encode()))
    log.info(">> store of %d images by %s written to %s", store.count, teacher.name, folder)
    return folder


def _write_augmented(store: DescriptorStore, folder: Path, whitening: Optional[Tuple[np.ndarray, np.ndarray]],
                     k: int, alpha: float, device: str) -> Dict[str, Any]:
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
            DescriptorStore(folder, images, key, dim).open()
        except StoreMismatch:
            stale = [folder / "manifest.json", folder / "images.txt", folder / "skipped.txt",
                     *folder.glob("shard_*.npy"), *folder.glob("shard_*.json")]
    for path in legacy + stale:
        path.unlink(missing_ok=True)
    if legacy or stale:
        log.info(">> replacing the store in %s: the descriptors of its earlier indexing removed", folder)


def _read_index(index_file: Path, faiss: Any) -> Any:
    try:
        return faiss.read_index(str(index_file))
    except RuntimeError as err:
        raise StoreError(f"cannot read {index_file} ({str(err).splitlines()[0]}): it is damaged; delete it or rebuild it "
                         "with: python -m aml.search index --ivfpq") from None


def _sharded_descriptors(folder: Path) -> Tuple[np.ndarray, List[str], Dict[str, Any]]:
    """(D x N descriptors, images, settings) of a store folder, each part checked."""
    try:
        store = read_store(folder)
    except ValueError as err:
        raise StoreError(f"{err}; index it again ({REBUILD})") from None
    if not store.complete():
        raise StoreError(f"the store {folder} lacks {len(store.missing())} of {store.shards} shards (an interrupted "
                         f"indexing): run the same {REBUILD} command again to encode them")
    if not (folder / SEARCH).is_file():
        raise StoreError(f"the store {folder} has no {SEARCH} (the indexing did not finish): run the same {REBUILD} "
                         "command again")
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
        raise StoreError(f"cannot read {path} ({err}), which {SEARCH} names: the store is damaged; index it again "
                         f"({REBUILD} --dba K)") from None
    if vecs.shape != shape or vecs.dtype.kind != "f" or not np.isfinite(vecs).all():
        raise StoreError(f"{path} holds {vecs.dtype} descriptors of shape {vecs.shape}, not the store's finite "
                         f"{shape}: the store is damaged; index it again ({REBUILD} --dba K)")
    return vecs


def _legacy_descriptors(folder: Path) -> Tuple[np.ndarray, List[str], Dict[str, Any]]:
    """The same from a store of the older one-file layout (descriptors.npy with its image
    list and settings), which aml.search wrote before it wrote shards."""
    path = folder / LEGACY_FILES[0]
    settings = feature_file_settings(path)
    if settings is None:
        raise StoreError(f"{folder} is not a complete store (no {path.name} with matching settings); build it "
                         f"with: {REBUILD}")
    missing = sorted(set(STORE_SETTINGS) - set(settings))
    if missing:
        raise StoreError(f"the settings of {path} lack {', '.join(missing)}: it is not a store made by "
                         f"aml.search or was edited; index it again ({REBUILD})")
    try:
        vecs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise StoreError(f"cannot read {path} ({err}): the store is damaged; index it again ({REBUILD})") from None
    if vecs.ndim != 2 or vecs.dtype.kind != "f" or vecs.shape[0] != settings.get("dim"):
        raise StoreError(f"{path} holds a {vecs.dtype} array of shape {vecs.shape}, not {settings.get('dim')}-d float "
                         f"descriptors as its settings say: the store is damaged; index it again ({REBUILD})")
    if not np.isfinite(vecs).all():
        raise StoreError(f"{path} holds NaN or infinite values: the store is damaged; index it again ({REBUILD})")
    images = (folder / LEGACY_FILES[1]).read_text(errors="surrogateescape").splitlines()
    if len(images) != vecs.shape[1]:
        raise StoreError(f"{path} holds {vecs.shape[1]} descriptors but its image list {len(images)} "
                         f"images: the store is damaged; index it again ({REBUILD})")
    return vecs, images, settings


def _whitening(folder: Path, dim: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The store's whitening (None without one), checked against its dimension."""
    if not (folder / WHITENING).is_file():
        return None
    data = load_plain_file(folder / WHITENING)
    try:
        whitening = (np.asarray(data["m"]), np.asarray(data["P"]))
    except (TypeError, KeyError, IndexError, ValueError) as err:
        raise StoreError(f"{folder / WHITENING} is not a whitening (m, P): {type(err).__name__} {err}; delete it "
                         f"or index again ({REBUILD})") from None
    if whitening[1].ndim != 2 or {w.dtype.kind for w in whitening} != {"f"}:
        raise StoreError(f"{folder / WHITENING} is not a whitening (m, P of floats); delete it or index again "
                         f"({REBUILD})")
    if whitening[1].shape != (dim, dim) or whitening[0].size != dim:
        raise StoreError(f"{folder / WHITENING} whitens {whitening[1].shape[1]}-d descriptors but the store holds "
                         f"{dim}-d ones: it belongs to another store; delete it or index again")
    return whitening


def open_store(folder: PathLike) -> Store:
    """Load a store (either layout), its descriptors whitened when it has a whitening (and augmented with DBA).

    Args:
        folder: the store's folder.

    Returns:
        The store.

    Raises:
        StoreError: naming what is missing or damaged, with the fix.

    Examples:
        >>> from aml.search import open_store
        >>> store = open_store("photos.store")  # doctest: +SKIP
        >>> store.vecs.shape, store.settings["network"]  # doctest: +SKIP
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
    return Store(folder, np.ascontiguousarray(vecs, dtype=np.float32), images, settings, whitening)


def check_teacher(store: Store, student: ImageRetrievalNet, teacher: Optional[str] = None,
                  data_root: Optional[str] = None) -> None:
    """Refuse a store encoded by another network than the student's teacher.

    The teacher (``teacher``, else the student's ``meta['teacher']``) must have the store's
    weights (fingerprint) when its checkpoint is on this machine, else the store's network
    name (a published teacher by its list name, a checkpoint by its file name).

    Args:
        store: the opened store.
        student: the student whose queries are to search it.
        teacher: the teacher as the user named it (a published name, an alias or a path);
            None: the student's ``meta['teacher']``.
        data_root: where a teacher's checkpoint is found (to compare its fingerprint).

    Raises:
        StoreError: when the student's dimension is not the store's, the teacher is not the
            store's network, or the student records no teacher and none is given.

    Examples:
        >>> from aml.networks import load_named_or_file
        >>> from aml.search import check_teacher, open_store
        >>> store = open_store("photos.store")  # doctest: +SKIP
        >>> student = load_named_or_file("mobilenet-v2-gem-contr-vgg16").net  # doctest: +SKIP
        >>> check_teacher(store, student)  # doctest: +SKIP
    """
    settings = store.settings
    if student.meta["outputdim"] != settings["dim"]:
        raise StoreError(f"the student outputs {student.meta['outputdim']}-d descriptors but the store {store.folder} "
                         f"holds {settings['dim']}-d ones of {settings['network']}")
    given = teacher or student.meta.get("teacher")
    if given is None:
        raise StoreError(f"the student does not record its teacher; give --teacher (the store was encoded by "
                         f"{settings['network']})")
    spec = NetworkSpec.parse(given)
    if spec.local_file is not None:
        same = load_spec(spec, None, data_root).fingerprint == settings["fingerprint"]
        network = f"{settings['network']} ({settings['source']})"
    else:
        same = spec.name == settings["network"]
        network = settings["network"]
    if not same:
        raise StoreError(f"the store {store.folder} was encoded by {network}, not by the student's teacher {given}; "
                         "index the database with that teacher")


def query_store(store: Store, student: ImageRetrievalNet, images: Sequence[str], k: int = 10,
                bbxs: Optional[Sequence[Optional[BBox]]] = None,
                config: ExtractionConfig = DEFAULT_EXTRACTION, qe: int = 0,
                qe_alpha: float = DEFAULT_ALPHA) -> List[Dict[str, Any]]:
    """Encode query images with the student and search the store with them.

    The queries are encoded as the store was (image size, scales).

    Args:
        store: the opened store (checked against the student with `check_teacher`).
        student: the student network.
        images: the query images.
        k: results per query.
        bbxs: per query image, a crop box (x1, y1, x2, y2) or None.
        config: how to extract (`aml.descriptors.ExtractionConfig`).
        qe: αQE of each student query with its ``qe`` first results among the teacher's
            descriptors, searched again (`Store.search`); 0: none.
        qe_alpha: the power of their similarities.

    Returns:
        Per query, ``{"query": path, "results": [{"image": path, "score": score}, ...]}``
        with its top-``k`` database images, best first.

    Examples:
        >>> from aml.search import query_store
        >>> results = query_store(store, student, ["query.jpg"], k=5)  # doctest: +SKIP
        >>> results[0]["results"][0]  # doctest: +SKIP
        {'image': '/photos/0042.jpg', 'score': 0.83}
    """
    scales = store.settings["scales"]
    queries = describe_images(student, images, store.settings["image_size"], scales, bbxs=bbxs,
                              config=config.but(desc="queries"))
    scores, indices = store.search(queries, k, qe=qe, qe_alpha=qe_alpha)
    return [{"query": str(image), "results": [{"image": store.images[int(i)], "score": float(s)}
                                              for s, i in zip(row_scores, row_indices) if i >= 0]}
            for image, row_scores, row_indices in zip(images, scores, indices)]


def check_onnx_student(store: Store, path: PathLike) -> OnnxStudentInfo:
    """Refuse an exported student (ONNX) that was not made for this store's teacher.

    The file's aml metadata (written by `aml.export`) must name the store's teacher (by
    fingerprint when the teacher's checkpoint was on the exporting machine, else by name), its
    dimension, and the store's whitening when one is folded in; the store must be encoded at
    one scale (the graph encodes one).

    Args:
        store: the opened store.
        path: the ONNX file.

    Returns:
        The file's metadata.

    Raises:
        StoreError: naming the file and the store's teacher, with the fix.
        OnnxStudentError: when the file is missing or damaged.

    Examples:
        >>> from aml.search import check_onnx_student, open_store
        >>> check_onnx_student(open_store("photos.store"), "deploy/student-int8.onnx").precision  # doctest: +SKIP
        'int8'
    """
    settings = store.settings
    teacher = f"{settings['network']} ({settings['source']})"
    info = read_onnx_metadata(path)
    if info is None:
        raise StoreError(f"{path} has no aml metadata (it was not written by aml.export, or by an older version), so "
                         f"nothing says it is a student of the store's teacher {teacher}; export it again: {REEXPORT}")
    if info.dim != settings["dim"]:
        raise StoreError(f"{path} outputs {info.dim}-d descriptors but the store {store.folder} holds "
                         f"{settings['dim']}-d ones of {teacher}; query it with a student of that teacher")
    if info.teacher is None:
        raise StoreError(f"{path} does not record its teacher (the store was encoded by {teacher}); export it again "
                         f"with --teacher: {REEXPORT}")
    same = (info.teacher_fingerprint == settings["fingerprint"] if info.teacher_fingerprint
            else info.teacher == settings["network"])
    if not same:
        raise StoreError(f"{path} is a student of {info.teacher}, but the store {store.folder} was encoded by "
                         f"{teacher}; query it with a student of that teacher, or index the database with "
                         f"{info.teacher}")
    if info.whitening is not None and (store.whitening is None or info.whitening != whitening_digest(*store.whitening)):
        has = "no whitening" if store.whitening is None else "another whitening"
        raise StoreError(f"{path} has a whitening folded in but the store {store.folder} has {has}; export the "
                         f"student again with --store {store.folder}")
    if list(settings["scales"]) != [1]:
        raise StoreError(f"the store {store.folder} is encoded at scales {list(settings['scales'])}, and an exported "
                         "student encodes one: query it with the student's checkpoint (--network)")
    return info


def query_store_onnx(store: Store, path: PathLike, images: Sequence[str], k: int = 10,
                     bbxs: Optional[Sequence[Optional[BBox]]] = None, qe: int = 0,
                     qe_alpha: float = DEFAULT_ALPHA) -> List[Dict[str, Any]]:
    """Encode query images with an exported student (onnxruntime) and search the store with them.

    The file is checked with `check_onnx_student`; the queries are encoded at the store's
    image size, resized as aml resizes, and whitened like the database unless the file has the
    store's whitening folded in.

    Args:
        store: the opened store.
        path: the exported student (``student.onnx`` or ``student-int8.onnx``).
        images: the query images.
        k: results per query.
        bbxs: per query image, a crop box (x1, y1, x2, y2) or None.
        qe: αQE of each query with its ``qe`` first results (0: none), as `query_store`.
        qe_alpha: the power of their similarities.

    Returns:
        Per query, ``{"query": path, "results": [{"image": path, "score": score}, ...]}``,
        as `query_store`.

    Examples:
        >>> from aml.search import open_store, query_store_onnx
        >>> hits = query_store_onnx(open_store("photos.store"), "deploy/student-int8.onnx", ["q.jpg"])  # doctest: +SKIP
        >>> hits[0]["results"][0]["image"]  # doctest: +SKIP
        '/photos/0042.jpg'
    """
    info = check_onnx_student(store, path)
    session = onnx_session(path)
    width = session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != info.dim:
        raise StoreError(f"{path} outputs {width}-d descriptors but its metadata says {info.dim}: the file was edited "
                         f"or damaged; export it again: {REEXPORT}")
    queries = describe_with_onnx(session, images, store.settings["image_size"], bbxs)
    scores, indices = store.search(queries, k, prewhitened=info.whitening is not None, qe=qe, qe_alpha=qe_alpha)
    return [{"query": str(image), "results": [{"image": store.images[int(i)], "score": float(s)}
                                              for s, i in zip(row_scores, row_indices) if i >= 0]}
            for image, row_scores, row_indices in zip(images, scores, indices)]


def build_ivfpq(store: Store, nlist: int, m: int, nprobe: int = 16, k: int = 10, sample: int = 200,
                seed: int = 0) -> float:
    """Train and save an IVF-PQ index over a store; return its recall@k against exact search.

    The index (``index.faiss`` in the store's folder) has ``nlist`` lists and ``m``
    sub-quantisers of 8 bits; ``sample`` database descriptors serve as the queries of the
    recall.

    Args:
        store: the opened store.
        nlist: the inverted lists.
        m: the sub-quantisers; the dimension must be a multiple of it.
        nprobe: the lists searched per query (at most ``nlist``).
        k: the k of recall@k.
        sample: the database descriptors drawn as queries.
        seed: the seed of their draw.

    Returns:
        The recall@k of the index against exact search, in [0, 1].

    Raises:
        StoreError: without faiss, with fewer database images than 256 (and than ``nlist``),
            or with a dimension that is not a multiple of ``m``.

    Examples:
        >>> from aml.search import build_ivfpq, open_store
        >>> build_ivfpq(open_store("photos.store"), nlist=64, m=32)  # doctest: +SKIP
        0.94
    """
    faiss = faiss_or_none()
    if faiss is None:
        raise StoreError("--ivfpq needs faiss: pip install faiss-cpu")
    dim, n = store.vecs.shape
    if n < max(PQ_CODES, nlist):
        raise StoreError(f"--ivfpq {nlist},{m} needs at least {max(PQ_CODES, nlist)} database images (8-bit codes); "
                         f"the store has {n}: search it exactly (without --ivfpq)")
    if dim % m:
        raise StoreError(f"--ivfpq: the dimension {dim} is not a multiple of {m} sub-quantisers")
    data = np.ascontiguousarray(store.vecs.T, dtype=np.float32)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(data)
    index.add(data)
    index.nprobe = min(nprobe, nlist)
    rng = np.random.default_rng(seed)
    probe = data[rng.choice(n, size=min(sample, n), replace=False)]
    k = min(k, n)
    exact = np.argsort(-(probe @ data.T), axis=1, kind="stable")[:, :k]
    _, approximate = index.search(probe, k)
    recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approximate, exact)]))
    faiss.write_index(index, str(store.folder / INDEX))
    return recall
