"""Training data sets (retrieval-SfM-120k layout) and whitening sets.

``<data_root>/train/<name>/<name>.pkl`` = {'train': db, 'val': db}, db = {'cids', 'cluster',
'qidxs', 'pidxs'}; ``<name>-whiten.pkl`` = {'cids', 'qidxs', 'pidxs'}. Image of a cid:
``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, cast

import numpy as np

from aml.data.download import download_file, fetch_archives
from aml.data.formats import TrainingDb
from aml.data.paths import cid2filename, data_subdir, link_folder
from aml.data.safe_pickle import DatasetFileError, index_array, kind_of, load_pickle
from aml.data.synthetic import generate_train_set
from aml.utils.errors import ConfigError, MissingFile, lookup
from aml.utils.types import PathLike

CIRTORCH_TRAIN = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/"


@dataclass(frozen=True)
class TrainSet:
    """A training (or whitening) set: its folder name and how to fill it."""

    name: str
    folder: str  # sub-folder of <data_root>/train that holds the images and pickles
    prepare: Optional[Callable[[Path, bool], None]]  # (train root, progress bars); None: a custom set, on disk
    training: bool = True  # has <name>.pkl with train/val splits (main.py -d)
    whitening: bool = True  # has <name>-whiten.pkl (test.py -w, main.py --test-whiten)

    def pickles(self, use: str = "all") -> List[str]:
        """Its pickles a use needs.

        Args:
            use: ``"training"`` (``<name>.pkl``), ``"whitening"`` (``<name>-whiten.pkl``), or
                ``"all"`` (those the set has).

        Returns:
            The file names.
        """
        training, whitening = [f"{self.name}.pkl"], [f"{self.name}-whiten.pkl"]
        uses = {"training": training, "whitening": whitening}
        uses["all"] = training * self.training + whitening * self.whitening
        return lookup(uses, use, "use of a training set")


def _download_sfm(train_root: Path, progress: bool) -> None:
    ims = train_root / "retrieval-SfM-120k" / "ims"
    archive = train_root / "retrieval-SfM-120k" / "ims.tar.gz"
    fetch_archives([(CIRTORCH_TRAIN + "ims/ims.tar.gz", archive)], ims, progress=progress)
    link_folder(ims, train_root / "retrieval-SfM-30k" / "ims")
    for folder, name in (
        ("retrieval-SfM-120k", "retrieval-SfM-120k.pkl"),
        ("retrieval-SfM-120k", "retrieval-SfM-120k-whiten.pkl"),
        ("retrieval-SfM-30k", "retrieval-SfM-30k-whiten.pkl"),
    ):
        download_file(CIRTORCH_TRAIN + "dbs/" + name, train_root / folder / name, progress=progress)


def _generate(name: str) -> Callable[[Path, bool], None]:
    def prepare(train_root: Path, progress: bool) -> None:
        generate_train_set(train_root.parent, name, progress=progress)

    return prepare


TRAIN_SETS: Dict[str, TrainSet] = {
    "retrieval-SfM-120k": TrainSet("retrieval-SfM-120k", "retrieval-SfM-120k", _download_sfm),
    "retrieval-SfM-30k": TrainSet("retrieval-SfM-30k", "retrieval-SfM-30k", _download_sfm, training=False),
    "synth-sfm": TrainSet("synth-sfm", "synth-sfm", _generate("synth-sfm")),
}


def training_set_names() -> list:
    """Names usable as ``main.py -d`` (sets with train/val splits)."""
    return [name for name, entry in TRAIN_SETS.items() if entry.training]


def whitening_set_names() -> list:
    """Names usable as ``test.py -w`` / ``main.py --test-whiten`` (sets with a whitening pickle)."""
    return [name for name, entry in TRAIN_SETS.items() if entry.whitening]


def get_train_set(name: str, data_root: Optional[PathLike] = None) -> TrainSet:
    """Registry entry for a training/whitening set (case-insensitive), else a custom set: a
    folder ``<data_root>/train/<name>/`` with ``ims/`` and ``<name>.pkl`` and/or
    ``<name>-whiten.pkl`` (see ``python -m aml.cli.make_trainset``)."""
    return find_train_set(name, data_subdir(data_root, "train"))


def registered_spelling(name: str) -> str:
    """A registered set's name as the registry spells it, whatever the case given.

    Args:
        name: a set's name as typed (``retrieval-sfm-120k``).

    Returns:
        The registry's spelling (``retrieval-SfM-120k``); any other name as it is (a custom set).

    Examples:
        >>> from aml.data.trainsets import registered_spelling
        >>> registered_spelling("RETRIEVAL-SFM-120K"), registered_spelling("mine")
        ('retrieval-SfM-120k', 'mine')
    """
    return next((key for key in TRAIN_SETS if key.lower() == name.lower()), name)


def find_train_set(name: str, train_root: Path) -> TrainSet:
    """`get_train_set` in the folder of the training sets (``<data_root>/train``)."""
    entry = TRAIN_SETS.get(registered_spelling(name))
    if entry is not None:
        return entry
    folder = Path(train_root) / name
    training, whitening = (folder / f"{name}.pkl").is_file(), (folder / f"{name}-whiten.pkl").is_file()
    if (folder / "ims").is_dir() and (training or whitening):
        return TrainSet(name, name, None, training=training, whitening=whitening)
    raise ConfigError(
        f"Unsupported or unknown training dataset: {name}! Choose from {sorted(TRAIN_SETS)}, or make a "
        f"folder {folder} with ims/ and {name}.pkl (python -m aml.cli.make_trainset)"
    )


def is_training_set(name: str, data_root: Optional[PathLike] = None) -> bool:
    """Whether ``name`` is a registered or custom training set (not a test set)."""
    try:
        return get_train_set(name, data_root).training
    except ValueError:
        return False


def prepare_train_set(
    name: str, data_root: Optional[PathLike] = None, use: str = "all", progress: bool = False
) -> Path:
    """Make sure the training set's images and the pickles of ``use`` exist (download or generate).

    Args:
        name: the set.
        data_root: the data root (None: the default).
        use: what the pickles are needed for (`TrainSet.pickles`): ``"training"``,
            ``"whitening"`` or ``"all"``.
        progress: progress bars on stderr while it is downloaded or generated.

    Returns:
        The set's folder.
    """
    train_root = data_subdir(data_root, "train")
    entry = find_train_set(name, train_root)
    return _prepared(entry, train_root, entry.pickles(use), progress)


def _prepared(entry: TrainSet, train_root: Path, pickles: Sequence[str], progress: bool = False) -> Path:
    """The folder of ``entry`` under ``train_root``, downloaded or generated when it lacks its
    images or one of ``pickles`` (each by name: one of two was taken for the set)."""
    folder = Path(train_root) / entry.folder
    missing = _missing(folder, pickles)
    if not missing:
        return folder
    if entry.prepare is None:
        raise MissingFile(f"{folder} lacks {', '.join(missing)}; make it again with python -m aml.cli.make_trainset")
    entry.prepare(Path(train_root), progress)  # a download fetches what is missing; a generated set is kept
    missing = _missing(folder, pickles)
    if missing:
        raise MissingFile(
            f"{folder} lacks {', '.join(missing)} of the set {entry.name}: delete the folder to make it again"
        )
    return folder


def _missing(folder: Path, pickles: Sequence[str]) -> List[str]:
    """What ``folder`` lacks of ``ims/`` and ``pickles``."""
    return [name for name in ("ims", *pickles) if not (folder / name).exists()]


def check_image_db(db: Any, source: str, clusters: bool = True) -> Dict[str, Any]:
    """A copy of an image db (one split of a training set, or a whitening set) once checked:
    a dict whose 'cids' are image ids, 'qidxs' and 'pidxs' equally many image indices and,
    with ``clusters``, 'cluster' one integer per image.

    Raises:
        DatasetFileError: naming ``source`` and the field, when anything else is found.
    """
    keys = ("cids", "qidxs", "pidxs") + (("cluster",) if clusters else ())
    if not isinstance(db, dict) or any(key not in db for key in keys):
        found = sorted(map(str, db)) if isinstance(db, dict) else kind_of(db)
        raise DatasetFileError(
            f"{source} holds {found}, not an image db with {', '.join(keys)}; download or make "
            "it again (python -m aml.cli.make_trainset)"
        )
    cids = db["cids"]
    if not isinstance(cids, (list, tuple)) or not all(isinstance(cid, str) for cid in cids):
        raise DatasetFileError(f"{source}: 'cids' holds {kind_of(cids)}, where a list of image ids belongs")
    ranges = {"qidxs": len(cids), "pidxs": len(cids), **({"cluster": None} if clusters else {})}
    for key, size in ranges.items():
        indices = index_array(db[key])
        if indices is not None and np.ndim(db[key]) != 1:  # one index per image or pair, not lists of them
            indices = None
        if indices is None or (size is not None and indices.size and (indices.min() < 0 or indices.max() >= size)):
            raise DatasetFileError(
                f"{source}: '{key}' holds {kind_of(db[key])}, where a list of integers"
                + (f" in [0, {size}) belongs (one per image of 'cids')" if size else " belongs")
            )
    if len(db["qidxs"]) != len(db["pidxs"]) or (clusters and len(db["cluster"]) != len(cids)):
        raise DatasetFileError(
            f"{source}: {len(db['qidxs'])} qidxs for {len(db['pidxs'])} pidxs"
            + (f", {len(db['cluster'])} clusters for {len(cids)} images" if clusters else "")
            + "; they must pair up one to one"
        )
    return dict(db)


def pairs_across_clusters(db: TrainingDb) -> List[int]:
    """The query/positive pairs of a training split whose two images lie in different clusters.

    Negatives are mined from the clusters other than the query's: such a pair's positive can be
    drawn as its own negative (the original's mining alike). aml's own sets have none.

    Args:
        db: a split (`load_training_db`).

    Returns:
        The pairs' indices in 'qidxs'.

    Examples:
        >>> from aml.data.trainsets import pairs_across_clusters
        >>> pairs_across_clusters({"qidxs": [0, 2], "pidxs": [1, 3], "cluster": [5, 5, 6, 7]})
        [1]
    """
    cluster = np.asarray(db["cluster"])
    across = cluster[np.asarray(db["qidxs"], dtype=np.int64)] != cluster[np.asarray(db["pidxs"], dtype=np.int64)]
    return np.flatnonzero(across).tolist()


def load_training_db(name: str, split: str, data_root: Optional[PathLike] = None) -> TrainingDb:
    """One split ('train' or 'val') of a training set, with absolute image paths in 'images'."""
    entry = get_train_set(name, data_root)
    folder = prepare_train_set(name, data_root, "training")
    path = folder / f"{entry.name}.pkl"
    dbs = load_pickle(path)
    if not isinstance(dbs, dict) or split not in dbs:
        found = sorted(map(str, dbs)) if isinstance(dbs, dict) else kind_of(dbs)
        fix = "; train without validation (--no-val), or make the set again" if split == "val" else ""
        raise DatasetFileError(f"{path} has no split {split!r} (found {found}){fix}")
    db = check_image_db(dbs[split], f"{path} ({split})")
    db["images"] = [cid2filename(cid, folder / "ims") for cid in db["cids"]]
    return cast(TrainingDb, db)


def load_whitening_db(name: str, data_root: Optional[PathLike] = None) -> TrainingDb:
    """A whitening set ``<name>-whiten.pkl`` with absolute image paths in 'images'."""
    return read_whitening_db(name, data_subdir(data_root, "train"))


def read_whitening_db(name: str, train_root: Path) -> TrainingDb:
    """`load_whitening_db` in the folder of the training sets (``<data_root>/train``).

    Args:
        name: the whitening set (a training set with ``<name>-whiten.pkl``).
        train_root: the folder of the training sets; the set is prepared there when missing.

    Returns:
        The checked db, with the absolute image paths in 'images'.
    """
    entry = find_train_set(name, train_root)
    folder = _prepared(entry, train_root, entry.pickles("whitening"))
    path = folder / f"{entry.name}-whiten.pkl"
    db = check_image_db(load_pickle(path), str(path), clusters=False)
    db["images"] = [cid2filename(cid, folder / "ims") for cid in db["cids"]]
    return cast(TrainingDb, db)
