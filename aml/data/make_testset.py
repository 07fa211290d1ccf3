"""Build a test set of your own images in the revisited Oxford layout, checked.

The description is JSON or CSV. JSON::

    {"queries": [{"image": "q1.jpg", "box": [x1, y1, x2, y2],
                  "easy": ["a.jpg"], "hard": ["b.jpg"], "junk": ["c.jpg"]}, ...],
     "database": ["a.jpg", "b.jpg", ...]}

(``ok``/``junk`` instead of ``easy``/``hard``/``junk`` gives the classic protocol; ``box`` is
optional; ``database`` defaults to every image of the images folder that is not a query).
CSV: a header ``query,box,easy,hard,junk`` (or ``query,box,ok,junk``), one query per row,
the box as four numbers separated by spaces (or empty), each list as image names separated
by spaces. Names are paths relative to the images folder.

The result is ``<data_root>/test/<name>/`` with ``jpg/`` and ``gnd_<name>.pkl``, which
``test.py -d <name>`` reads like any registered set. Everything is checked before anything
is written: missing or unreadable images, images in two lists of one query, positives that
are not in the database, boxes outside their image, database images listed twice, and
queries that are in the database other than as their own junk, and copies of one image (the
same bytes under two names) that a query's lists treat apart (each would count a result
wrongly).
"""

import json
import logging
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, TypedDict, cast

from PIL import Image

from aml.utils.atomic import publish_folder, staged
from aml.data.distractors import DISTRACTOR_SETS
from aml.data.images import ImageLoadError, listed_files, load_image, rgb_image, turned_images
from aml.data.download import file_sha256
from aml.data.paths import check_set_name, data_subdir, resolve_data_root, within_data_root
from aml.data.safe_pickle import kind_of, save_pickle
from aml.data.testsets import TEST_SETS
from aml.data.trainsets import is_training_set
from aml.utils.errors import DataError
from aml.utils.text_files import TextFile, csv_rows, read_text_file
from aml.utils.types import PathLike

log = logging.getLogger(__name__)
#: a query's lists of database images
ListName = Literal["easy", "hard", "junk", "ok"]
LISTS: Dict[str, Tuple[ListName, ...]] = {"revisited": ("easy", "hard", "junk"), "classic": ("ok", "junk")}
#: what a query of a description may hold (a JSON object's keys, a CSV's columns with ``query`` for ``image``)
QUERY_KEYS = ("image", "box", "easy", "hard", "junk", "ok")
DESCRIPTION_KEYS = ("queries", "database")
CSV_COLUMNS = ("query", "box", "easy", "hard", "junk", "ok")


class DescribedQuery(TypedDict, total=False):
    """One query of a description: its image, optional box (x1, y1, x2, y2) and the lists of
    database images (``easy``, ``hard``, ``junk``, or ``ok`` and ``junk``), names relative to
    the images folder."""

    image: str
    box: Optional[List[float]]
    easy: List[str]
    hard: List[str]
    junk: List[str]
    ok: List[str]


class Description(TypedDict):
    """A test set's description: its queries and its database images (None: every image of the
    folder that is not a query)."""

    queries: List[DescribedQuery]
    database: Optional[List[str]]


class TestSetError(DataError):
    """The description of a test set does not fit its images."""

    __test__ = False  # not a pytest test class, despite its name


#: a test set's description and its database list, as read
DESCRIPTION_TEXT = TextFile("the description", "give a JSON or CSV description (see docs/own-data.md)", TestSetError)
DATABASE_LIST_TEXT = TextFile("--database", "give a text file of image names, one a line", TestSetError)


def read_description(path: PathLike) -> Description:
    """{'queries': [...], 'database': [...] or None} from a JSON or CSV description (UTF-8)."""
    path = Path(path)
    text = read_text_file(path, DESCRIPTION_TEXT)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_once_each)
        except json.JSONDecodeError as err:
            raise TestSetError(f"{path} is not valid JSON ({err})") from None
        except _RepeatedKey as err:  # json keeps the last of two: the first's images were left out
            raise TestSetError(
                f"{path}: an object names {err} twice, and only the last would be read; give each field once"
            ) from None
        check_description(data, str(path))
        return {"queries": data["queries"], "database": data.get("database")}
    return {"queries": _csv_queries(text, path), "database": None}


class _RepeatedKey(TestSetError):
    """A JSON object that names a key twice (the key is the message)."""


def _once_each(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object's fields, refused when it names one twice."""
    found: Dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(repr(key))
        found[key] = value
    return found


def _check_queries_once(queries: Sequence[DescribedQuery], source: str) -> None:
    """Refuse a query image listed twice with the same box (a CSV line per positive): its
    images split between the entries, each would count the other's positives as wrong results."""
    first: Dict[Tuple[str, Optional[Tuple[float, ...]]], int] = {}
    for q, entry in enumerate(queries):
        box = _bbx(entry)
        key = (entry["image"], None if box is None else tuple(box))
        if key in first:
            raise TestSetError(
                f"{source}: queries {first[key]} and {q} are both {entry['image']}"
                + (f" with the box {box}" if box is not None else "")
                + ": each would count the other's positives as wrong results; list each query once, with all its "
                "images"
            )
        first[key] = q


def _csv_queries(text: str, path: Path) -> List[DescribedQuery]:
    """The queries of a CSV description (columns query, box, easy, hard, junk or ok)."""
    queries: List[DescribedQuery] = []
    for line, row in csv_rows(text, path, TestSetError, CSV_COLUMNS):
        if not (row.get("query") or "").strip():
            raise TestSetError(f"{path}: line {line} has no query image; give one in its 'query' column")
        entry: DescribedQuery = {"image": row["query"].strip()}
        if (row.get("box") or "").strip():
            entry["box"] = _csv_box(row["box"], f"{path}: line {line} ({entry['image']})")
        for key in ("easy", "hard", "junk", "ok"):
            if key in row:
                entry[key] = (row[key] or "").split()
        queries.append(entry)
    return queries


def read_database_list(path: PathLike) -> List[str]:
    """The image names of a database list, one a line (UTF-8), for a description's 'database'."""
    return [line.strip() for line in read_text_file(path, DATABASE_LIST_TEXT).splitlines() if line.strip()]


def _csv_box(text: str, where: str) -> List[float]:
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        raise TestSetError(f"{where} has box {text!r}; a box is four numbers x1 y1 x2 y2") from None


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _is_box(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def check_description(description: Any, source: str) -> None:
    """Refuse a description whose fields are of the wrong types (as JSON can give them):
    ``queries`` a list of objects with an ``image`` name, lists of names, an optional box of
    four numbers; ``database`` a list of names or absent.

    Raises:
        TestSetError: naming ``source``, the query and the field.
    """
    if not isinstance(description, dict) or not isinstance(description.get("queries"), list):
        found = kind_of(description.get("queries")) if isinstance(description, dict) else kind_of(description)
        raise TestSetError(
            f"{source}: expected an object whose 'queries' is a list of queries (and an optional "
            f"'database' list), found {found}"
        )
    unknown = sorted(set(description) - set(DESCRIPTION_KEYS))
    if unknown:
        raise TestSetError(f"{source}: unknown field {unknown[0]!r}; a description holds {', '.join(DESCRIPTION_KEYS)}")
    if description.get("database") is not None and not _is_names(description["database"]):
        raise TestSetError(f"{source}: 'database' is {kind_of(description['database'])}, not a list of image names")
    for q, entry in enumerate(description["queries"]):
        where = f"{source}: query {q}"
        if not isinstance(entry, dict):
            raise TestSetError(f"{where} is {kind_of(entry)}, not an object with 'image', 'box' and image lists")
        if not isinstance(entry.get("image"), str):
            raise TestSetError(f"{where}: 'image' is {kind_of(entry.get('image'))}, not an image name")
        unknown = sorted(set(entry) - set(QUERY_KEYS))
        if unknown:  # a misspelt 'box' or list would be left out without a word
            raise TestSetError(
                f"{where} ({entry['image']}): unknown field {unknown[0]!r}; a query holds {', '.join(QUERY_KEYS)}"
            )
        for key in ("easy", "hard", "junk", "ok"):
            if key in entry and not _is_names(entry[key]):
                raise TestSetError(
                    f"{where} ({entry['image']}): '{key}' is {kind_of(entry[key])}, not a list of image names"
                )
        if entry.get("box") is not None and not _is_box(entry["box"]):
            raise TestSetError(
                f"{where} ({entry['image']}): 'box' is {kind_of(entry['box'])}, not four numbers x1, y1, x2, y2"
            )


def _protocol(queries: Sequence[DescribedQuery], source: str) -> str:
    keys = set().union(*(q.keys() for q in queries)) if queries else set()
    if "ok" in keys and keys & {"easy", "hard"}:
        raise TestSetError(f"{source}: mix of classic (ok) and revisited (easy/hard) lists; use one protocol")
    return "classic" if "ok" in keys else "revisited"


def _check_images(names: Sequence[str], images_dir: Path, source: str) -> Dict[str, tuple]:
    """Size of every named image, decoded whole (a truncated file has a valid header); one
    error listing the missing or unreadable ones."""
    sizes, problems = {}, []
    for name in dict.fromkeys(names):
        try:
            found = stat.S_ISREG(os.stat(images_dir / name).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            found = False
        except OSError as err:  # a line of a CSV given as --database: too long for a file name
            problems.append(f"{name[:60]!r} is not a file name ({err.strerror})")
            continue
        if not found:  # a name of the user's lists: nothing to download again
            problems.append(f"{name} is not a file in {images_dir}")
            continue
        try:
            sizes[name] = load_image(images_dir / name).size
        except ImageLoadError as err:
            problems.append(str(err))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise TestSetError(
            f"{source}: {len(problems)} images missing or unreadable: {shown}; fix the names (the description's "
            "or --database's), --images, or the files"
        )
    return sizes


def _check_query(
    q: int,
    entry: DescribedQuery,
    lists: Sequence[ListName],
    database: Dict[str, int],
    sizes: Dict[str, tuple],
    images_dir: Path,
    source: str,
) -> None:
    where = f"{source}: query {q} ({entry['image']})"
    seen: Dict[str, str] = {}
    for key in lists:
        for name in entry.get(key, []):
            if name in seen:
                raise TestSetError(f"{where} lists {name} in both '{seen[name]}' and '{key}'")
            if name not in database:
                split = source.lower().endswith(".csv") and any(name in other.split() for other in database)
                hint = "; a name holding a space needs the JSON form of the description" if split else ""
                raise TestSetError(f"{where} lists {name} in '{key}', but it is not in the database{hint}")
            seen[name] = key
    own = seen.get(entry["image"])
    boxed = entry.get("box") is not None  # its crop finding its whole image is a retrieval (classic Oxford's)
    if entry["image"] in database and own != "junk" and not (own and boxed):
        found = f"lists itself in '{own}' without a box" if own else "is in the database too"
        raise TestSetError(
            f"{where} {found}: it would find itself first and count as a {'right' if own else 'wrong'} result; "
            "leave it out of the database, or list it as the query's junk (or, with a box, among its positives)"
        )
    box = entry.get("box")
    if box is not None:
        width, height = sizes[entry["image"]]
        if len(box) != 4 or not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
            turned = bool(turned_images([images_dir / entry["image"]]))
            hint = " (its file carries an EXIF orientation: the box is in the stored pixels, not as shown)" * turned
            raise TestSetError(
                f"{where} has box {box}, outside its {width}x{height} image or not x1 < x2, y1 < y2{hint}"
            )
    if not any(entry.get(key) for key in lists if key != "junk"):
        log.warning(">> %s has no positive: it will not count in mAP", where)


def _same_files(names: Sequence[str], images_dir: Path) -> List[List[str]]:
    """The groups of ``names`` whose files hold the same bytes (copies, links), two or more
    each; only files of one size are read (equal bytes have equal sizes)."""
    by_size: Dict[int, List[str]] = {}
    for name in dict.fromkeys(names):
        by_size.setdefault(os.stat(images_dir / name).st_size, []).append(name)
    groups: Dict[str, List[str]] = {}
    for alike in (group for group in by_size.values() if len(group) > 1):
        for name in alike:
            groups.setdefault(file_sha256(images_dir / name), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def _check_copies(
    queries: Sequence[DescribedQuery],
    database_names: Sequence[str],
    lists: Sequence[ListName],
    images_dir: Path,
    source: str,
) -> None:
    """Refuse copies of one image (the same bytes under two names, or a link) that a query's
    lists treat apart: a database copy of the query that is not its junk (or, for a boxed
    query, among its positives) finds itself; two database copies in different lists treat one
    image as two."""
    query_names = [entry["image"] for entry in queries]
    groups = _same_files(list(database_names) + query_names, images_dir)
    if not groups:
        return
    database = set(database_names)
    for q, entry in enumerate(queries):
        where = f"{source}: query {q} ({entry['image']})"
        listed = {name: key for key in lists for name in entry.get(key, [])}
        boxed = entry.get("box") is not None
        for group in groups:
            in_database = [name for name in group if name in database]
            if entry["image"] in group:
                allowed = ("junk", *lists) if boxed else ("junk",)  # a crop may find its whole image
                itself = [name for name in in_database if listed.get(name) not in allowed and name != entry["image"]]
                if itself:
                    raise TestSetError(
                        f"{where}: the database image {itself[0]} is the same file (the same bytes): the query "
                        "would find itself first; leave it out of the database, or list it as the query's junk"
                    )
            elif len({listed.get(name) for name in in_database}) > 1:
                named = ", ".join(f"{name} ({listed.get(name) or 'in no list'})" for name in in_database)
                raise TestSetError(
                    f"{where}: {named} are the same file (the same bytes) in different lists: one image treated "
                    "as two; keep one copy in the database, or list the copies alike"
                )


def _warn_turned_boxes(queries: Sequence[DescribedQuery], images_dir: Path, source: str) -> None:
    """Name the boxed queries whose EXIF orientation a viewer applies: the box is read in the
    stored pixel grid (as cirtorch crops), not in the picture a viewer shows."""
    turned = turned_images([images_dir / entry["image"] for entry in queries if entry.get("box")])
    if turned:
        log.warning(
            ">> %s: %d boxed query image(s) carry an EXIF orientation (first: %s): boxes are in the stored "
            "pixel grid, which a viewer shows turned or mirrored; draw them on the stored pixels, or turn the "
            "files upright first (e.g. PIL's ImageOps.exif_transpose)",
            source,
            len(turned),
            turned[0],
        )


def _bbx(entry: DescribedQuery) -> Optional[List[float]]:
    box = entry.get("box")
    return None if box is None else [float(c) for c in box]


def _stem(name: str) -> str:
    return str(Path(name).with_suffix("")).replace(os.sep, "__")


def _copy_as_jpeg(source: Path, target: Path) -> None:
    """JPEGs are copied byte for byte (a phone's MPO too: a JPEG whose first picture every
    reader shows); other formats are converted (quality 95)."""
    with Image.open(source) as image:
        if image.format in ("JPEG", "MPO"):
            shutil.copyfile(source, target)
        else:
            rgb_image(image, source).save(target, "JPEG", quality=95)


def _database_names(description: Description, images_dir: Path, query_names: List[str], root: Path) -> List[str]:
    """The description's database, or else every image under ``images_dir`` but the queries
    (by extension, hidden files and folders left out: `image_files`) and those of the data
    root ``root``'s sets where they lie under it (``--images .`` with ``./data``: sets built
    before, copies of the queries and positives)."""
    listed = description.get("database")
    if listed is not None:
        return list(listed)
    listing = listed_files(images_dir)  # walked once: a folder it cannot read is named once
    found = listing.images
    inside = within_data_root(found + listing.others, images_dir, root)
    theirs = {path for path, entry in inside.items() if entry in ("test", "train")}
    kept = [path for path in found if path not in theirs]
    if len(kept) < len(found):
        log.warning(
            ">> %d images under %s belong to the sets of the data root %s, left out of the database",
            len(found) - len(kept),
            images_dir,
            root,
        )
    others = [path for path in listing.others if path not in theirs]
    if others:
        log.warning(
            ">> %d files of %s are not images by their extension and are left out of the database, e.g. %s; "
            "to keep them, give the database as a list (--database)",
            len(others),
            images_dir,
            others[0].name,
        )
    taken = set(query_names)
    names = (str(path.relative_to(images_dir)) for path in kept)
    return [name for name in names if name not in taken]


def _check_names(database_names: List[str], query_names: List[str], source: str) -> None:
    """Refuse two images whose names differ only by their extension or by case (one file on
    macOS and Windows), and a database image listed twice."""
    seen: Dict[str, str] = {}
    for name in dict.fromkeys(database_names + query_names):
        other = seen.setdefault(_stem(name).casefold(), name)
        if other != name:
            raise TestSetError(
                f"{source}: {other} and {name} share a name once the extension and case are dropped and "
                f"'{os.sep}' is written '__' (their copies in jpg/ would be one file: {_stem(name)}.jpg); rename one"
            )
    if len(set(database_names)) != len(database_names):
        twice = next(n for n in database_names if database_names.count(n) > 1)
        raise TestSetError(
            f"{source}: the database lists {twice} twice; list each image once (a copy that is not "
            "among a query's positives would count as a wrong result)"
        )


def _relative_name(name: str, source: str, images_dir: Path) -> str:
    """``name`` in one spelling (``./q.png`` is ``q.png``; an absolute path inside
    ``images_dir`` is taken relative to it); refused when it leaves the folder."""
    normal = os.path.normpath(name)
    if os.path.isabs(normal):
        tops = (os.path.abspath(images_dir), os.path.realpath(images_dir))  # as given, and through its links
        spellings = (normal, os.path.realpath(normal))
        inside = next(((p, t) for t in tops for p in spellings if os.path.commonpath([t, p]) == t), None)
        if inside is None:
            raise TestSetError(f"{source}: {name} is not inside --images {images_dir}; names are relative to --images")
        normal = os.path.relpath(*inside)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise TestSetError(f"{source}: {name} is not inside --images {images_dir}; names are relative to --images")
    return normal


def _normalized(description: Description, source: str, images_dir: Path) -> Description:
    """The description with every image name in one spelling (`_relative_name`)."""

    def names(values: Sequence[str]) -> List[str]:
        return [_relative_name(value, source, images_dir) for value in values]

    queries: List[DescribedQuery] = []
    for entry in description["queries"]:
        query = cast(DescribedQuery, {**entry, "image": _relative_name(entry["image"], source, images_dir)})
        for key in LISTS["revisited"] + LISTS["classic"]:
            if key in entry:
                query[key] = names(entry[key])
        queries.append(query)
    listed = description.get("database")
    return {"queries": queries, "database": None if listed is None else names(listed)}


def _check_no_training_set_shares(name: str, data_root: Optional[PathLike]) -> None:
    """Refuse a name under which extract_features.py would read a training set, or write the
    feature files of one's val split (``<set>-val_<network>.npy``), replacing them."""
    if is_training_set(name, data_root):
        raise TestSetError(
            f"--name {name}: a training set of that name is in {data_subdir(data_root, 'train')}, which "
            f"extract_features.py -d {name} would encode instead of this set; choose another name"
        )
    base, dash, split = name.rpartition("-")
    if dash and split.lower() == "val" and is_training_set(base, data_root):
        raise TestSetError(
            f"--name {name}: its feature files would be those of training set {base}'s val split "
            f"({base}-val_NETWORK.npy), each replacing the other; choose another name"
        )


def build_test_set(
    description: Description,
    images_dir: PathLike,
    name: str,
    data_root: Optional[PathLike] = None,
    source: str = "description",
) -> Path:
    """Check ``description`` (see `read_description`) against ``images_dir`` and write
    ``<data_root>/test/<name>/`` (staged, renamed into place when complete). Raises
    `TestSetError` naming the first problem; an existing set is never overwritten."""
    try:
        check_set_name(name)
    except ValueError as err:
        raise TestSetError(f"--name: {err}") from None
    if name.lower() in TEST_SETS:
        raise TestSetError(
            f"--name {name}: test.py -d {name} means the registered set {TEST_SETS[name.lower()].name}, not "
            "this one; choose another name"
        )
    taken = next((kind.folder for kind in DISTRACTOR_SETS.values() if kind.folder.lower() == name.lower()), None)
    if taken is not None:
        raise TestSetError(f"--name {name}: test/{taken} is where the distractor set is kept; choose another name")
    _check_no_training_set_shares(name, data_root)
    check_description(description, source)
    images_dir = Path(images_dir)
    description = _normalized(description, source, images_dir)
    queries = description["queries"]
    if not queries:
        raise TestSetError(f"{source}: no queries")
    protocol = _protocol(queries, source)
    lists = LISTS[protocol]
    query_names = [q["image"] for q in queries]
    _check_queries_once(queries, source)
    database_names = _database_names(description, images_dir, query_names, resolve_data_root(data_root))
    sizes = _check_images(list(query_names) + list(database_names), images_dir, source)
    _check_names(database_names, query_names, source)
    database = {n: i for i, n in enumerate(database_names)}
    for q, entry in enumerate(queries):
        _check_query(q, entry, lists, database, sizes, images_dir, source)
    _check_copies(queries, database_names, lists, images_dir, source)
    _warn_turned_boxes(queries, images_dir, source)
    folder = data_subdir(data_root, "test") / name
    if folder.exists():
        raise TestSetError(f"{folder} already exists; choose another --name or move it away")
    gnd = [
        {**{key: [database[n] for n in entry.get(key, [])] for key in lists}, "bbx": _bbx(entry)} for entry in queries
    ]
    ground_truth = {
        "imlist": [_stem(n) for n in database_names],
        "qimlist": [_stem(n) for n in query_names],
        "gnd": gnd,
    }
    with staged(folder) as staging:
        (staging / "jpg").mkdir(parents=True)
        for image in dict.fromkeys(list(database_names) + query_names):
            _copy_as_jpeg(images_dir / image, staging / "jpg" / f"{_stem(image)}.jpg")
        save_pickle(ground_truth, staging / f"gnd_{name}.pkl")
        if not publish_folder(staging, folder):
            raise TestSetError(
                f"{folder} was created by another process meanwhile; choose another --name or move it away"
            )
    log.info(
        ">> %s: %d queries, %d database images, %s protocol, in %s",
        name,
        len(queries),
        len(database_names),
        protocol,
        folder,
    )
    return folder


if __name__ == "__main__":  # the command line is aml.cli.make_testset (the data layer does not import the CLI)
    raise SystemExit("python -m aml.data.make_testset is now python -m aml.cli.make_testset (same flags)")
