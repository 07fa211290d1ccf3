"""Training data sets (retrieval-SfM-120k layout) and whitening sets.

``<data_root>/train/<name>/<name>.pkl`` = {'train': db, 'val': db}, db = {'cids', 'cluster',
'qidxs', 'pidxs'}; ``<name>-whiten.pkl`` = {'cids', 'qidxs', 'pidxs'}. Image of a cid:
``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, cast

from aml.data.download import download_file, extract_archive, remove_download
from aml.data.formats import TrainingDb
from aml.data.paths import cid2filename, data_subdir
from aml.data.safe_pickle import load_pickle
from aml.data.synthetic import generate_train_set
from aml.utils.errors import ConfigError, DataError
from aml.utils.types import PathLike

CIRTORCH_TRAIN = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/"


@dataclass(frozen=True)
class TrainSet:
    """A training (or whitening) set: its folder name and how to fill it."""

    name: str
    folder: str  # sub-folder of <data_root>/train that holds the images and pickles
    prepare: Optional[Callable[[Path], None]]  # None: a custom set, already on disk
    training: bool = True  # has <name>.pkl with train/val splits (main.py -d)
    whitening: bool = True  # has <name>-whiten.pkl (test.py -w, main.py --test-whiten)


def _download_sfm(train_root: Path) -> None:
    ims = train_root / "retrieval-SfM-120k" / "ims"
    if not ims.exists():
        archive = download_file(CIRTORCH_TRAIN + "ims/ims.tar.gz", train_root / "retrieval-SfM-120k" / "ims.tar.gz")
        extract_archive(archive, ims, progress=True)
        remove_download(archive)
    thirty = train_root / "retrieval-SfM-30k"
    thirty.mkdir(parents=True, exist_ok=True)
    if not (thirty / "ims").exists():
        os.symlink(ims.resolve(), thirty / "ims", target_is_directory=True)
    for folder, name in (("retrieval-SfM-120k", "retrieval-SfM-120k.pkl"),
                         ("retrieval-SfM-120k", "retrieval-SfM-120k-whiten.pkl"),
                         ("retrieval-SfM-30k", "retrieval-SfM-30k-whiten.pkl")):
        download_file(CIRTORCH_TRAIN + "dbs/" + name, train_root / folder / name)


def _generate(name: str) -> Callable[[Path], None]:
    def prepare(train_root: Path) -> None:
        generate_train_set(train_root.parent, name)

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
    for key, entry in TRAIN_SETS.items():
        if key.lower() == name.lower():
            return entry
    folder = data_subdir(data_root, "train") / name
    training, whitening = (folder / f"{name}.pkl").is_file(), (folder / f"{name}-whiten.pkl").is_file()
    if (folder / "ims").is_dir() and (training or whitening):
        return TrainSet(name, name, None, training=training, whitening=whitening)
    raise ConfigError(f"Unsupported or unknown training dataset: {name}! Choose from {sorted(TRAIN_SETS)}, or make a "
                      f"folder {folder} with ims/ and {name}.pkl (python -m aml.cli.make_trainset)")


def is_training_set(name: str, data_root: Optional[PathLike] = None) -> bool:
    """Whether ``name`` is a registered or custom training set (not a test set)."""
    try:
        return get_train_set(name, data_root).training
    except ValueError:
        return False


def prepare_train_set(name: str, data_root: Optional[PathLike] = None) -> Path:
    """Make sure the training set's images and pickles exist (download or generate)."""
    entry = get_train_set(name, data_root)
    train_root = data_subdir(data_root, "train")
    folder = train_root / entry.folder
    if not (folder / "ims").exists() or not any(folder.glob("*.pkl")):
        if entry.prepare is None:
            raise FileNotFoundError(f"{folder} lacks ims/ or its pickles; make it again with python -m "
                                    "aml.cli.make_trainset")
        entry.prepare(train_root)
    return folder


def load_training_db(name: str, split: str, data_root: Optional[PathLike] = None) -> TrainingDb:
    """One split ('train' or 'val') of a training set, with absolute image paths in 'images'."""
    entry = get_train_set(name, data_root)
    folder = prepare_train_set(name, data_root)
    db = load_pickle(folder / f"{entry.name}.pkl")
    if split not in db:
        raise DataError(f"{folder / (entry.name + '.pkl')} has no split {split!r} (found {sorted(db)})")
    db = dict(db[split])
    db["images"] = [cid2filename(cid, folder / "ims") for cid in db["cids"]]
    return cast(TrainingDb, db)


def load_whitening_db(name: str, data_root: Optional[PathLike] = None) -> TrainingDb:
    """A whitening set ``<name>-whiten.pkl`` with absolute image paths in 'images'."""
    entry = get_train_set(name, data_root)
    folder = prepare_train_set(name, data_root)
    db = dict(load_pickle(folder / f"{entry.name}-whiten.pkl"))
    db["images"] = [cid2filename(cid, folder / "ims") for cid in db["cids"]]
    return cast(TrainingDb, db)
