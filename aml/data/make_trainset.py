"""Build a training set of your own images in the retrieval-SfM-120k layout.

Input: a folder per landmark (``DIR/<landmark>/<images>``), or a CSV of (image, landmark id)
rows, or Google Landmarks v2's ``train_clean.csv`` (``landmark_id,images`` with the image ids
separated by spaces; ids are found as ``<id>``, ``<id>.jpg`` or GLDv2's
``<id[0]>/<id[1]>/<id[2]>/<id>.jpg`` under the images folder).

Rules (all draws from ``seed``):

- unreadable images, exact duplicates (same bytes; the first is kept) and landmarks left with
  fewer than two images are reported and left out;
- landmarks are split into train and val (a ``val_fraction`` of them, at least one);
- a landmark's images are shuffled and paired in a chain: (1st, 2nd), (2nd, 3rd), ... up to
  ``pairs_per_landmark`` query/positive pairs per landmark;
- ``cluster`` is the landmark's index within its split; ``cids`` are the sha1 of each image's
  bytes, so images land in ``ims/`` in cirtorch's cid2filename layout.

Written to ``<data_root>/train/<name>/``: ``ims/``, ``<name>.pkl`` ({'train': db, 'val': db})
and ``<name>-whiten.pkl`` (the train split's images and pairs, for ``-w <name>``).
"""

import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.utils.atomic import publish_folder, staged
from aml.data.images import IMAGE_EXTENSIONS, LOST_AND_FOUND, ImageLoadError, load_image, visible_files
from aml.data.paths import DataRootLike, check_set_name, data_subdir, resolve_data_root, within_data_root
from aml.data.safe_pickle import save_pickle
from aml.data.paths import cid2filename
from aml.data.testsets import find_test_set
from aml.data.trainsets import TRAIN_SETS
from aml.utils.errors import ConfigError, DataError
from aml.utils.text_files import TextFile, check_line_names, csv_rows, read_text_file
from aml.utils.types import PathLike

log = logging.getLogger(__name__)


class TrainSetError(DataError):
    """The images cannot make a training set (too few landmarks, a bad CSV, ...)."""


#: the CSV of `images_from_csv`, as read
TRAIN_CSV_TEXT = TextFile("the CSV", "give a CSV with columns image,landmark (UTF-8)", TrainSetError)


@dataclass
class TrainSetReport:
    """What was left out, and why, and what was written."""

    unreadable: List[str] = field(default_factory=list)
    duplicates: List[Tuple[str, str]] = field(default_factory=list)  # (left out, same bytes as)
    single_landmarks: List[str] = field(default_factory=list)
    images: Dict[str, int] = field(default_factory=dict)  # split -> images
    pairs: Dict[str, int] = field(default_factory=dict)  # split -> query/positive pairs
    landmarks: Dict[str, int] = field(default_factory=dict)

    def lines(self) -> List[str]:
        out = [
            f">> {split}: {self.images[split]} images of {self.landmarks[split]} landmarks, "
            f"{self.pairs[split]} query/positive pairs"
            for split in ("train", "val")
        ]
        if self.unreadable:
            out.append(f">> left out {len(self.unreadable)} unreadable images: {', '.join(self.unreadable[:5])}")
        if self.duplicates:
            out.append(
                f">> left out {len(self.duplicates)} duplicates: "
                + ", ".join(f"{a} (= {b})" for a, b in self.duplicates[:5])
            )
        for split, outcome in (
            ("train", "only modes without negatives (reg, rand) train on it"),
            ("val", "train with --no-val (validation mines negatives, but in mode rand)"),
        ):
            if self.landmarks.get(split) == 1:
                out.append(
                    f">> the {split} split holds one landmark: tuples get no negatives (they come from other "
                    f"landmarks), so {outcome}; 4 landmarks give each split two"
                )
        if self.single_landmarks:
            out.append(
                f">> left out {len(self.single_landmarks)} landmarks with a single image: "
                + ", ".join(self.single_landmarks[:5])
            )
        return out


def _validation_landmarks(usable: int, val_fraction: float) -> int:
    """The landmarks held out for validation: ``val_fraction`` of them, and, where there are
    4 or more, at least 2 in each split (negatives come from other landmarks than the query's:
    a split of one landmark has none)."""
    fewest = 2 if usable >= 4 else 1
    return min(usable - fewest, max(fewest, round(val_fraction * usable)))


def images_from_folders(root: PathLike, data_root: DataRootLike = None) -> List[Tuple[Path, str]]:
    """(image, landmark) for every file of ``root/<landmark>/`` but hidden ones (`visible_files`;
    one that is not an image is reported as unreadable) and those of the data root where it
    lies under ``root`` (``--folders .`` beside ``./data``: the sets built before are copies of
    the landmarks' images, not a landmark); a name with a line break is refused
    (`aml.utils.text_files.check_line_names`)."""
    root = Path(root)
    landmarks = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != LOST_AND_FOUND
    )
    if not landmarks:
        raise TrainSetError(f"{root} holds no landmark folders (expected {root}/<landmark>/<images>)")
    found = [(image, folder.name) for folder in landmarks for image in visible_files(folder)]
    inside = within_data_root([image for image, _ in found], root, resolve_data_root(data_root))
    if inside:
        log.warning(
            ">> %d files under %s lie in the data root %s (%s) and are left out: it is no landmark",
            len(inside),
            root,
            resolve_data_root(data_root),
            ", ".join(sorted(set(inside.values()))),
        )
        found = [(image, landmark) for image, landmark in found if image not in inside]
    check_line_names(str(image) for image, _ in found)
    loose = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if loose:
        log.warning(
            ">> %d files of %s lie beside its landmark folders, not in one (e.g. %s), and are left out; put each "
            "in its landmark's folder to use it",
            len(loose),
            root,
            loose[0].name,
        )
    return found


def _find_image(images_dir: Path, image_id: str) -> Path:
    for candidate in (
        images_dir / image_id,
        images_dir / f"{image_id}.jpg",
        images_dir / image_id[:1] / image_id[1:2] / image_id[2:3] / f"{image_id}.jpg",
    ):
        if candidate.is_file():
            return candidate
    return images_dir / image_id  # reported as unreadable


def images_from_csv(path: PathLike, images_dir: PathLike) -> List[Tuple[Path, str]]:
    """(image, landmark) from a CSV with columns image,landmark (any header naming them
    ``image``/``id`` and ``landmark``/``landmark_id``), or GLDv2's ``landmark_id,images``."""
    images_dir = Path(images_dir)
    read = ("image", "id", "images", "landmark", "landmark_id")  # any other column is left unread
    lines = csv_rows(read_text_file(path, TRAIN_CSV_TEXT), path, TrainSetError, read=read)
    if not lines:
        raise TrainSetError(f"{path} has no rows")
    rows = [row for _, row in lines]
    columns = set(rows[0])
    landmark_key = "landmark_id" if "landmark_id" in columns else "landmark"
    if landmark_key not in columns:
        raise TrainSetError(f"{path}: no 'landmark' or 'landmark_id' column (found {sorted(columns)})")
    image_key = "images" if "images" in columns else "image" if "image" in columns else "id"  # images: GLDv2's
    if image_key not in columns:
        raise TrainSetError(f"{path}: no 'image' or 'id' column (found {sorted(columns)})")
    for line, row in lines:
        empty = [key for key in (landmark_key, image_key) if not (row.get(key) or "").strip()]
        if empty:
            raise TrainSetError(f"{path}: line {line} has no {' and no '.join(empty)}; give both on every line")
    if image_key == "images":  # GLDv2 train_clean.csv: the image ids of a landmark, separated by spaces
        return [(_find_image(images_dir, i), row[landmark_key].strip()) for row in rows for i in row["images"].split()]
    return [(_find_image(images_dir, row[image_key].strip()), row[landmark_key].strip()) for row in rows]


def _readable_unique(items: Sequence[Tuple[Path, str]], report: TrainSetReport) -> Dict[str, List[Tuple[Path, str]]]:
    """Landmark -> [(image, sha1)], without unreadable images and duplicates."""
    seen: Dict[str, Path] = {}
    by_landmark: Dict[str, List[Tuple[Path, str]]] = {}
    for image, landmark in items:
        try:
            load_image(image)
        except ImageLoadError:
            report.unreadable.append(str(image))
            continue
        digest = hashlib.sha1(image.read_bytes()).hexdigest()
        if digest in seen:
            report.duplicates.append((str(image), str(seen[digest])))
            continue
        seen[digest] = image
        by_landmark.setdefault(str(landmark), []).append((image, digest))
    return by_landmark


def _warn_of_case(landmarks: Sequence[str]) -> None:
    """Name landmark ids that differ by case alone (``Eiffel``, ``eiffel``): two landmarks,
    which may fall in both splits and be mined as each other's negatives."""
    seen: Dict[str, str] = {}
    for landmark in landmarks:
        other = seen.setdefault(landmark.casefold(), landmark)
        if other != landmark:
            log.warning(
                ">> landmarks %r and %r differ by case alone: they are two landmarks, each the other's negative; "
                "give them one id if they are one",
                other,
                landmark,
            )
            return


def _chain_pairs(count: int, start: int, limit: int) -> List[Tuple[int, int]]:
    return [(start + k, start + k + 1) for k in range(min(limit, count - 1))]


def _split_db(
    landmarks: Sequence[str], by_landmark, pairs_per_landmark: int, rng: np.random.Generator
) -> Tuple[dict, List[Tuple[Path, str]]]:
    cids: List[str] = []
    cluster: List[int] = []
    qidxs: List[int] = []
    pidxs: List[int] = []
    files: List[Tuple[Path, str]] = []
    for index, landmark in enumerate(landmarks):
        members = [by_landmark[landmark][i] for i in rng.permutation(len(by_landmark[landmark]))]
        for a, b in _chain_pairs(len(members), len(cids), pairs_per_landmark):
            qidxs.append(a)
            pidxs.append(b)
        cids += [digest for _, digest in members]
        cluster += [index] * len(members)
        files += members
    return {"cids": cids, "cluster": cluster, "qidxs": qidxs, "pidxs": pidxs}, files


def _check_no_test_set_shares(name: str, data_root: Optional[PathLike]) -> None:
    """Refuse a name that extract_features.py would also read as a test set, or whose val
    split's feature files (``<name>-val_<network>.npy``) a test set's would replace."""
    for taken in (name, f"{name}-val"):
        try:
            found = find_test_set(taken, data_subdir(data_root, "test"))
        except ConfigError:
            continue
        raise TrainSetError(
            f"--name {name}: the test set {found.name} would share "
            + ("its name" if taken == name else f"the feature files of {name}'s val split ({taken}_NETWORK.npy)")
            + " in extract_features.py; choose another name"
        )


def build_train_set(
    items: Sequence[Tuple[Path, str]],
    name: str,
    data_root: Optional[PathLike] = None,
    val_fraction: float = 0.1,
    pairs_per_landmark: int = 6,
    seed: int = 0,
) -> TrainSetReport:
    """Write ``<data_root>/train/<name>/`` from (image, landmark) ``items`` (see the module
    docstring for the rules); staged and renamed into place. Returns what was left out."""
    try:
        check_set_name(name)
    except ValueError as err:
        raise TrainSetError(f"--name: {err}") from None
    if name.lower() in {key.lower() for key in TRAIN_SETS}:
        raise TrainSetError(
            f"--name {name}: main.py -d {name} means the registered set of that name, not this one; choose another name"
        )
    _check_no_test_set_shares(name, data_root)
    report = TrainSetReport()
    by_landmark = _readable_unique(items, report)
    if items and len(report.unreadable) == len(items):
        raise TrainSetError(
            f"none of the {len(items)} images could be read (missing or not images), e.g. {report.unreadable[0]}; "
            "check the image folder (--images, --folders)"
        )
    _warn_of_case(list(by_landmark))
    report.single_landmarks = sorted(k for k, v in by_landmark.items() if len(v) < 2)
    usable = sorted(k for k, v in by_landmark.items() if len(v) >= 2)
    if len(usable) < 2:
        lost = []
        if report.unreadable:
            lost.append(f"{len(report.unreadable)} images unreadable (e.g. {report.unreadable[0]})")
        if report.single_landmarks:
            lost.append(f"{len(report.single_landmarks)} landmarks of one image (e.g. {report.single_landmarks[0]})")
        raise TrainSetError(
            f"{len(usable)} landmarks with two or more readable, distinct images: at least 2 are "
            "needed (one for training, one for validation)" + (f"; {', '.join(lost)}" if lost else "")
        )
    rng = np.random.default_rng(seed)
    order = [usable[i] for i in rng.permutation(len(usable))]
    n_val = _validation_landmarks(len(usable), val_fraction)
    splits = {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}
    folder = data_subdir(data_root, "train") / name
    if folder.exists():
        raise TrainSetError(f"{folder} already exists; choose another --name or move it away")
    with staged(folder) as staging:
        dbs = {}
        for split, landmarks in splits.items():
            dbs[split], files = _split_db(landmarks, by_landmark, pairs_per_landmark, rng)
            for image, digest in files:
                target = Path(cid2filename(digest, staging / "ims"))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image, target)
            report.images[split], report.pairs[split] = len(dbs[split]["cids"]), len(dbs[split]["qidxs"])
            report.landmarks[split] = len(landmarks)
        save_pickle(dbs, staging / f"{name}.pkl")
        save_pickle({k: dbs["train"][k] for k in ("cids", "qidxs", "pidxs")}, staging / f"{name}-whiten.pkl")
        if not publish_folder(staging, folder):
            raise TrainSetError(
                f"{folder} was created by another process meanwhile; choose another --name or move it away"
            )
    return report


if __name__ == "__main__":  # the command line is aml.cli.make_trainset (the data layer does not import the CLI)
    raise SystemExit("python -m aml.data.make_trainset is now python -m aml.cli.make_trainset (same flags)")
