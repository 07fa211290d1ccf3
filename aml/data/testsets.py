"""Test data sets: the registry, cirtorch's ``configdataset``, and their download.

On disk (``<data_root>/test/<name>/``): ``jpg/<image>.jpg`` and ``gnd_<name>.pkl`` =
{'imlist', 'qimlist', 'gnd'}; revisited gnd entries hold ``bbx``, ``easy``, ``hard``,
``junk``; classic ones (oxford5k, paris6k) ``bbx``, ``ok``, ``junk``.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, cast

import numpy as np

from aml.data.download import download_file, fetch_archives
from aml.data.formats import TestConfig
from aml.data.paths import data_subdir, link_folder
from aml.data.safe_pickle import DatasetFileError, index_array, kind_of, load_pickle
from aml.data.synthetic import generate_test_set
from aml.utils.errors import ConfigError, MissingFile
from aml.utils.types import PathLike

CIRTORCH_TEST = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/"
VGG = "https://www.robots.ox.ac.uk/~vgg/data/"

#: image archives (the face-blurred "-v1" releases that replaced the withdrawn originals).
IMAGE_ARCHIVES: Dict[str, List[str]] = {
    "oxford5k": [VGG + "oxbuildings/oxbuild_images-v1.tgz"],
    "paris6k": [VGG + "parisbuildings/paris_1-v1.tgz", VGG + "parisbuildings/paris_2-v1.tgz"],
}


@dataclass(frozen=True)
class EvaluationSet:
    """A test data set: evaluation protocol and how to get its files into the data root."""

    name: str
    protocol: str  # "revisited" (easy/hard/junk) or "classic" (ok/junk)
    prepare: Optional[Callable[[Path, bool], None]] = None  # fills <data_root>/test/<name> (progress bars?)


def _download_real(name: str, images_from: str) -> Callable[[Path, bool], None]:
    def prepare(test_root: Path, progress: bool) -> None:
        folder = test_root / name
        jpg = folder / "jpg"
        source = test_root / images_from / "jpg"
        if not jpg.exists():
            archives = [(url, test_root / images_from / url.rsplit("/", 1)[1]) for url in IMAGE_ARCHIVES[images_from]]
            fetch_archives(archives, source, flatten=True, progress=progress)
        if source != jpg:
            link_folder(source, jpg)
        gnd = f"gnd_{name}.pkl"
        download_file(CIRTORCH_TEST + f"{name}/{gnd}", folder / gnd, progress=progress)

    return prepare


def _generate_synthetic(name: str) -> Callable[[Path, bool], None]:
    def prepare(test_root: Path, progress: bool) -> None:
        generate_test_set(test_root.parent, name)

    return prepare


TEST_SETS: Dict[str, EvaluationSet] = {
    "oxford5k": EvaluationSet("oxford5k", "classic", _download_real("oxford5k", "oxford5k")),
    "paris6k": EvaluationSet("paris6k", "classic", _download_real("paris6k", "paris6k")),
    "roxford5k": EvaluationSet("roxford5k", "revisited", _download_real("roxford5k", "oxford5k")),
    "rparis6k": EvaluationSet("rparis6k", "revisited", _download_real("rparis6k", "paris6k")),
    "synth-oxford": EvaluationSet("synth-oxford", "revisited", _generate_synthetic("synth-oxford")),
    "synth-paris": EvaluationSet("synth-paris", "revisited", _generate_synthetic("synth-paris")),
}


def _custom_protocol(gnd_path: Path) -> str:
    """'revisited' when a gnd's entries hold easy/hard/junk lists, 'classic' for ok/junk."""
    data = load_pickle(gnd_path)
    gnd = data.get("gnd") if isinstance(data, dict) else None
    first = gnd[0] if isinstance(gnd, (list, tuple)) and gnd and isinstance(gnd[0], dict) else {}
    for protocol, keys in GND_KEYS.items():
        if all(key in first for key in keys):
            return protocol
    raise DatasetFileError(
        f"{gnd_path}: its entries hold {sorted(map(str, first))}; a gnd needs easy/hard/junk "
        "(revisited) or ok/junk (classic) lists"
    )


def get_test_set(name: str, data_root: Optional[PathLike] = None) -> EvaluationSet:
    """Registry entry for ``name`` (case-insensitive), else a custom set: any folder
    ``<data_root>/test/<name>/`` with ``jpg/`` and ``gnd_<name>.pkl`` (protocol read from the
    gnd; see ``python -m aml.cli.make_testset``). A ValueError lists the choices otherwise."""
    return find_test_set(name, data_subdir(data_root, "test"))


def find_test_set(name: str, test_root: PathLike) -> EvaluationSet:
    """`get_test_set` in the folder of the test sets (``<data_root>/test``)."""
    if name.lower() in TEST_SETS:
        return TEST_SETS[name.lower()]
    folder = Path(test_root) / name
    if (folder / f"gnd_{name}.pkl").is_file() and (folder / "jpg").is_dir():
        return EvaluationSet(name, _custom_protocol(folder / f"gnd_{name}.pkl"))
    raise ConfigError(
        f"Unsupported or unknown dataset: {name}! Choose from {sorted(TEST_SETS)}, or make a folder "
        f"{folder} with jpg/ and gnd_{name}.pkl (python -m aml.cli.make_testset)"
    )


def prepare_test_set(name: str, data_root: Optional[PathLike] = None, progress: bool = False) -> Path:
    """Make sure ``<data_root>/test/<name>`` holds images and gnd (download or generate;
    ``progress``: bars while downloading and unpacking)."""
    return _prepared(name, data_subdir(data_root, "test"), progress)


def _prepared(name: str, test_root: Path, progress: bool) -> Path:
    """The folder of test set ``name`` under ``test_root``, downloaded or generated when missing."""
    entry = find_test_set(name, test_root)
    gnd = test_root / entry.name / f"gnd_{entry.name}.pkl"
    if not gnd.exists() or not (test_root / entry.name / "jpg").exists():
        if entry.prepare is None:
            raise MissingFile(f"{gnd} is missing and {name} cannot be downloaded automatically; put it there")
        entry.prepare(test_root, progress)
    return test_root / entry.name


def read_test_set(name: str, test_root: Path, progress: bool = False) -> TestConfig:
    """A test set's config (`configdataset`), prepared first when missing.

    Args:
        name: the test set.
        test_root: the folder of the test sets (``<data_root>/test``).
        progress: bars while downloading and unpacking.

    Returns:
        Its config: image lists, ground truth, protocol, folders.
    """
    _prepared(name, Path(test_root), progress)
    return configdataset(name, test_root)


def configdataset(dataset: str, dir_main: PathLike) -> TestConfig:
    """cirtorch's config dict of a test set stored under ``dir_main`` (``<data_root>/test``).

    Keys: imlist, qimlist, gnd, gnd_fname, ext, qext, dir_data, dir_images, n, nq,
    im_fname(cfg, i), qim_fname(cfg, i), dataset, protocol.
    """
    entry = find_test_set(dataset, dir_main)
    name = entry.name
    dir_data = os.path.join(str(dir_main), name)
    gnd_fname = os.path.join(dir_data, f"gnd_{name}.pkl")
    cfg = load_pickle(gnd_fname)
    if not isinstance(cfg, dict):
        raise DatasetFileError(
            f"{gnd_fname} holds a {type(cfg).__name__}, not a dict of imlist, qimlist and gnd; "
            "not a ground-truth file: download or make it again"
        )
    missing = {"imlist", "qimlist", "gnd"} - set(cfg)
    if missing:
        raise DatasetFileError(f"{gnd_fname} lacks {sorted(missing)}; not a ground-truth file")
    cfg = dict(cfg)
    check_ground_truth(cfg, entry.protocol, gnd_fname)
    cfg.update(
        gnd_fname=gnd_fname,
        ext=".jpg",
        qext=".jpg",
        dir_data=dir_data,
        dir_images=os.path.join(dir_data, "jpg"),
        n=len(cfg["imlist"]),
        nq=len(cfg["qimlist"]),
        im_fname=config_imname,
        qim_fname=config_qimname,
        dataset=name,
        protocol=entry.protocol,
    )
    return cast(TestConfig, cfg)


GND_KEYS = {"revisited": ("easy", "hard", "junk"), "classic": ("ok", "junk")}
#: a difficulty level of the revisited protocol
Level = Literal["easy", "medium", "hard"]
#: the difficulty levels of the revisited protocol (Medium: easy and hard positives; Hard: hard ones)
LEVELS: Tuple[Level, ...] = ("easy", "medium", "hard")
#: the levels the paper and aml's tables report (revisitop's Medium and Hard)
REPORTED_LEVELS = LEVELS[1:]


def _names(cfg: Mapping[str, Any], field: str, source: PathLike) -> int:
    """The length of the image list ``cfg[field]``; a `DatasetFileError` unless it is a list of names."""
    names = cfg[field]
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        bad = names if not isinstance(names, (list, tuple)) else next(n for n in names if not isinstance(n, str))
        raise DatasetFileError(
            f"{source}: '{field}' holds {kind_of(bad)}, where a list of image names belongs; "
            "download or make the gnd file again"
        )
    return len(names)


def _box(box: Any) -> Optional[np.ndarray]:
    """A gnd box as four floats, or None when it is not four numbers."""
    try:
        values = np.asarray(box, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    return values if values.size == 4 else None


def _check_index_lists(where: str, entry: Mapping[str, Any], protocol: str, n: int) -> None:
    """Refuse a query's lists (those of ``protocol``) that are missing, not integers inside the ``n`` database images,
    or that name an image twice (in one list, or in two: an image both positive and junk
    scores an AP above 1; one listed twice as positive, an AP below 1 for a perfect ranking)."""
    seen: Dict[int, str] = {}
    for key in GND_KEYS[protocol]:
        if key not in entry:
            raise DatasetFileError(f"{where} has no '{key}' list, which the {protocol} protocol needs")
        indices = index_array(entry[key])
        if indices is None:
            raise DatasetFileError(
                f"{where} has {kind_of(entry[key])} in '{key}', where a list of database indices belongs"
            )
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            bad = [i for i in indices.tolist() if not 0 <= i < n][:3]
            raise DatasetFileError(
                f"{where} lists database indices {bad} in '{key}', outside the {n} images of "
                "the image list; the gnd file does not belong to these images"
            )
        for index in indices.tolist():
            if index in seen:
                also = f"twice in '{key}'" if seen[index] == key else f"in both '{seen[index]}' and '{key}'"
                raise DatasetFileError(
                    f"{where} lists database image {index} {also}; each image has one label per query"
                )
            seen[index] = key


def check_ground_truth(cfg: Mapping[str, Any], protocol: str, source: PathLike) -> None:
    """Refuse a gnd whose entries do not fit its image lists: lists of image names, one entry
    (a dict) per query, the protocol's keys present, every listed index an integer inside the
    database and named once per query, boxes of four finite numbers with x1 < x2 and y1 < y2. Raises a
    `DatasetFileError` (a ValueError) naming ``source`` and the query."""
    n, nq, gnd = _names(cfg, "imlist", source), _names(cfg, "qimlist", source), cfg["gnd"]
    if not isinstance(gnd, (list, tuple)):
        raise DatasetFileError(f"{source}: 'gnd' holds {kind_of(gnd)}, where a list of one entry per query belongs")
    if len(gnd) != nq:
        raise DatasetFileError(f"{source}: {len(gnd)} gnd entries for {nq} queries; download the gnd file again")
    for q, entry in enumerate(gnd):
        where = f"{source}: query {q} ({cfg['qimlist'][q]})"
        if not isinstance(entry, dict):
            raise DatasetFileError(f"{where} has {kind_of(entry)} for its entry, where a dict of lists belongs")
        _check_index_lists(where, entry, protocol, n)
        if entry.get("bbx") is not None:
            box = _box(entry["bbx"])
            if box is None or not np.isfinite(box).all() or box[0] >= box[2] or box[1] >= box[3]:
                shown = box.tolist() if box is not None else kind_of(entry["bbx"])
                raise DatasetFileError(f"{where} has box {shown}; a box is x1, y1, x2, y2 with x1 < x2 and y1 < y2")


def config_imname(cfg: TestConfig, i: int) -> str:
    """Path of database image ``i``."""
    return os.path.join(cfg["dir_images"], cfg["imlist"][i] + cfg["ext"])


def config_qimname(cfg: TestConfig, i: int) -> str:
    """Path of query image ``i``."""
    return os.path.join(cfg["dir_images"], cfg["qimlist"][i] + cfg["qext"])


def query_and_database_paths(cfg: TestConfig) -> Tuple[List[str], List[str], List[Optional[Tuple[float, ...]]]]:
    """Database paths, query paths and query boxes (None when the gnd has no bbx)."""
    images = [config_imname(cfg, i) for i in range(cfg["n"])]
    queries = [config_qimname(cfg, i) for i in range(cfg["nq"])]
    bbxs = [tuple(g["bbx"]) if g.get("bbx") is not None else None for g in cfg["gnd"]]
    return images, queries, bbxs
