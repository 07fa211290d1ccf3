"""Querying a store: the checks that the student (a checkpoint, or an exported ONNX file) was
made for the store's teacher, and the searches of its query images."""

import logging
import os
import weakref
from typing import List, Optional, Sequence, TypedDict

import numpy as np

from aml.data.paths import DataRootLike
from aml.data.images import BBox, check_image_list, turned_images
from aml.descriptors import DEFAULT_EXTRACTION, ExtractionConfig, describe_images
from aml.descriptors.onnx_student import (
    REEXPORT,
    OnnxStudentInfo,
    describe_with_onnx,
    onnx_session,
    read_onnx_metadata,
    whitening_digest,
)
from aml.evaluation.reranking import Reranking
from aml.networks.fingerprint import network_fingerprint
from aml.networks.loading import NetworkSpec, Source, check_network, load_spec
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.search.database import SearchDatabase, StoreError, check_results_wanted
from aml.utils.distributed import warn_once
from aml.utils.types import PathLike

log = logging.getLogger(__name__)


class Hit(TypedDict):
    """One result of a query: a database image and its score."""

    image: str
    score: float


class Hits(TypedDict):
    """A query image and its results, best first (an entry of the list ``python -m aml.search query --json`` writes)."""

    query: str
    results: List[Hit]


def check_teacher(
    database: SearchDatabase, student: ImageRetrievalNet, teacher: Optional[str] = None, data_root: DataRootLike = None
) -> None:
    """Refuse a store encoded by another network than the student's teacher.

    The store's own network (the same weights) is accepted whatever it records: a symmetric
    search.
    The store's weights (fingerprint) must be the teacher's: for the teacher the student
    records (``teacher`` None or its ``meta['teacher']``), those it was trained with (its
    ``meta['teacher_fingerprint']``); for another teacher, or a student that does not record
    them, those of the teacher's checkpoint when it is on this machine. Otherwise only the
    store's network name is compared (a published teacher by its list name; a checkpoint by
    its file name, with a warning that its weights went unchecked). A teacher given whose
    weights are not those the student was trained against is warned of (as test.py does).

    Args:
        database: the store's database (`aml.search.open_database`).
        student: the student whose queries are to search it.
        teacher: the teacher as the user named it (a published name, an alias or a path), or
            as the student records it (`aml.networks.LoadedNetwork.recorded_teacher`, which
            knows a published student's); None: the student's ``meta['teacher']``.
        data_root: where a teacher's checkpoint is found (to compare its fingerprint).

    Raises:
        StoreError: when the student's dimension is not the store's, the teacher is not the
            store's network, or the student records no teacher and none is given.

    Examples:
        >>> from aml.networks import load_named_or_file
        >>> from aml.search import check_teacher, open_database
        >>> database = open_database("photos.store")  # doctest: +SKIP
        >>> student = load_named_or_file("mobilenet-v2-gem-contr-vgg16").net  # doctest: +SKIP
        >>> check_teacher(database, student)  # doctest: +SKIP
    """
    settings, folder = database.settings, database.folder
    if student.meta["outputdim"] != settings["dim"]:
        raise StoreError(
            f"the student outputs {student.meta['outputdim']}-d descriptors but the store {folder} "
            f"holds {settings['dim']}-d ones of {settings['network']}"
        )
    if network_fingerprint(student) == settings["fingerprint"]:
        return  # the store's own network: a symmetric search
    named = student.meta.get("teacher")
    given = teacher or named
    if given is None:
        raise StoreError(
            f"the student does not record its teacher; give --teacher (the store was encoded by {settings['network']})"
        )
    spec = NetworkSpec.parse(given)
    trained_with = student.meta.get("teacher_fingerprint")  # the weights it was trained against
    recorded = trained_with if given == named else None
    network = f"{settings['network']} ({settings['source']})"
    ours = recorded if recorded is not None or spec.local_file is None else load_spec(spec, None, data_root).fingerprint
    _warn_of_other_weights(trained_with, given, ours)
    if ours is not None:  # by the weights
        same = ours == settings["fingerprint"]
        network = f"{settings['network']} ({settings['source']}, weights {settings['fingerprint'][:8]})"
        given = f"{given} (weights {ours[:8]})"
    else:
        same, network = _same_by_name(spec, database), settings["network"]
    if not same:
        raise StoreError(
            f"the store {folder} was encoded by {network}, not by the student's teacher {given}; "
            "index the database with that teacher"
        )


def _same_by_name(spec: NetworkSpec, database: SearchDatabase) -> bool:
    """Whether the teacher ``spec`` names is the store's network by its name (no weights to
    compare); a checkpoint's file name is said to be all that was compared."""
    same = spec.name == database.settings["network"]
    if same and spec.source is Source.CHECKPOINT:
        log.warning(
            ">> the store %s is checked against the teacher %s by its file name only: that checkpoint is not "
            "on this machine and the student records no teacher fingerprint",
            database.folder,
            spec.given,
        )
    return same


def _warn_of_other_weights(trained_with: Optional[str], given: str, ours: Optional[str]) -> None:
    """Say when the teacher given holds other weights (``ours``) than those the student was
    trained against (as test.py does): its queries do not live in that teacher's space."""
    if trained_with is not None and ours is not None and ours != trained_with:
        warn_once(
            log,
            ">> the student was trained against other teacher weights (%s) than those of --teacher %s (%s): its "
            "queries do not live in that teacher's space, and the results measure how compatible the two are",
            trained_with[:8],
            given,
            ours[:8],
        )


def _hits(database: SearchDatabase, images: Sequence[str], scores: np.ndarray, indices: np.ndarray) -> List[Hits]:
    return [
        {
            "query": str(image),
            "results": [
                {"image": database.images[int(i)], "score": float(s)}
                for s, i in zip(row_scores, row_indices, strict=True)
                if i >= 0
            ],
        }
        for image, row_scores, row_indices in zip(images, scores, indices, strict=True)
    ]


def query_database(
    database: SearchDatabase,
    student: ImageRetrievalNet,
    images: Sequence[str],
    k: int = 10,
    bbxs: Optional[Sequence[Optional[BBox]]] = None,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    reranking: Reranking = Reranking(),
    teacher: Optional[str] = None,
) -> List[Hits]:
    """Encode query images with the student and search the store's database with them.

    The student is first checked against the store (`check_teacher`: a store of another
    network than its teacher is refused); the queries are encoded as the store was (image
    size, scales).

    Args:
        database: the store's database.
        student: the student network.
        images: the query images.
        k: results per query.
        bbxs: per query image, a crop box (x1, y1, x2, y2) or None.
        config: how to extract (`aml.descriptors.ExtractionConfig`).
        reranking: its ``qe`` and ``superglobal``: αQE of each student query with its first
            results among the teacher's descriptors, searched again, and SuperGlobal's
            re-ranking of the results (`SearchDatabase.search`; DBA is the store's own).
        teacher: the student's teacher as `check_teacher` takes it (None: the one the
            student records).

    Returns:
        Per query, ``{"query": path, "results": [{"image": path, "score": score}, ...]}``
        with its top-``k`` database images, best first; no results for a query image that
        ``config.skip_bad`` skipped (unreadable).

    Raises:
        StoreError: for a store of another network than the student's teacher, or a ``k``
            that is not a whole number above 0.

    Examples:
        >>> from aml.search import query_database
        >>> results = query_database(database, student, ["query.jpg"], k=5)  # doctest: +SKIP
        >>> results[0]["results"][0]  # doctest: +SKIP
        {'image': '/photos/0042.jpg', 'score': 0.83}
    """
    check_network(student, "student")
    check_results_wanted(k)
    _check_teacher_once(database, student, teacher)
    _warn_turned(images)
    skipped: List[int] = []
    queries = describe_images(
        student,
        images,
        database.settings["image_size"],
        database.settings["scales"],
        bbxs=bbxs,
        config=config.but(desc="queries"),
        skipped=skipped,
    )
    unread = set(skipped)  # a skipped query's column is zeros
    read = [i for i in range(len(images)) if i not in unread]
    found = _hits(database, [images[i] for i in read], *database.search(queries[:, read], k, reranking=reranking))
    answers = dict(zip(read, found, strict=True))
    return [answers.get(i, {"query": str(image), "results": []}) for i, image in enumerate(images)]


def _check_teacher_once(database: SearchDatabase, student: ImageRetrievalNet, teacher: Optional[str]) -> None:
    """`check_teacher`, unless this student, with these weights (none changed or replaced since)
    and this teacher, passed it last: hashing the weights costs 7 to 50 ms a call on a CPU."""
    weights = tuple((tensor.data_ptr(), tensor._version) for tensor in student.state_dict().values())
    seen = (weakref.ref(student), teacher, weights)  # a dead reference equals no other
    if database.checked != seen:
        check_teacher(database, student, teacher)
        database.checked = seen


def _check_onnx_student_once(database: SearchDatabase, path: PathLike) -> OnnxStudentInfo:
    """`check_onnx_student`, unless this file, with this metadata (what the checks read),
    passed it last: its warnings are then not said again at each call."""
    metadata = read_onnx_metadata(path)  # first: it refuses what is not a file's path
    seen = ("onnx", os.path.abspath(path), metadata)
    if database.checked == seen and seen[2] is not None:
        return seen[2]
    info = check_onnx_student(database, path)
    database.checked = seen
    return info


def _warn_turned(images: Sequence[str]) -> None:
    """Name the query images whose EXIF orientation a viewer applies and aml does not (phone
    photos are often stored turned): they are searched, and boxed, as stored."""
    turned = turned_images(images)
    if turned:
        log.warning(
            ">> %d query image(s) carry an EXIF orientation (first: %s): aml, as cirtorch, encodes the pixels as "
            "stored, so they are searched as stored (a photo stored turned is searched turned) and --box is in "
            "the stored pixel grid; turn the files upright (e.g. PIL's ImageOps.exif_transpose) to search them "
            "as shown",
            len(turned),
            turned[0],
        )


def check_onnx_student(database: SearchDatabase, path: PathLike) -> OnnxStudentInfo:
    """Refuse an exported student (ONNX) that was not made for this store's teacher.

    The file's aml metadata (written by `aml.export`) must name the store's teacher (by
    fingerprint when the teacher's checkpoint was on the exporting machine, else by name), or
    be the store's own network (by fingerprint: a symmetric search); its dimension must be the
    store's, and so must a whitening folded in; the store must be encoded at one scale (the
    graph encodes one).

    Args:
        database: the store's database (`aml.search.open_database`).
        path: the ONNX file.

    Returns:
        The file's metadata.

    Raises:
        StoreError: naming the file and the store's teacher, with the fix.
        OnnxStudentError: when the file is missing or damaged.

    Examples:
        >>> from aml.search import check_onnx_student, open_database
        >>> check_onnx_student(open_database("photos.store"), "deploy/student-int8.onnx").precision  # doctest: +SKIP
        'int8'
    """
    settings, folder, whitening = database.settings, database.folder, database.whitening
    teacher = f"{settings['network']} ({settings['source']})"
    info = read_onnx_metadata(path)
    if info is None:
        raise StoreError(
            f"{path} has no aml metadata (it was not written by aml.export, or by an older version), so "
            f"nothing says it is a student of the store's teacher {teacher}; export it again: {REEXPORT}"
        )
    if info.dim != settings["dim"]:
        raise StoreError(
            f"{path} outputs {info.dim}-d descriptors but the store {folder} holds "
            f"{settings['dim']}-d ones of {teacher}; query it with a student of that teacher"
        )
    own = info.fingerprint == settings["fingerprint"]  # the store's own network: a symmetric search
    if info.teacher is None and not own:
        raise StoreError(
            f"{path} does not record its teacher (the store was encoded by {teacher}); export it again "
            f"with --teacher: {REEXPORT}"
        )
    same = own or _same_teacher(info, database, path)
    if not same:
        theirs = info.teacher
        if info.teacher_fingerprint:  # refused by the weights: both named by theirs
            theirs = f"{info.teacher} (weights {info.teacher_fingerprint[:8]})"
            teacher = f"{settings['network']} ({settings['source']}, weights {settings['fingerprint'][:8]})"
        raise StoreError(
            f"{path} is a student of {theirs}, but the store {folder} was encoded by "
            f"{teacher}; query it with a student of that teacher, or index the database with "
            f"{info.teacher}"
        )
    if info.whitening is not None and (whitening is None or info.whitening != whitening_digest(*whitening)):
        has = "no whitening" if whitening is None else "another whitening"
        raise StoreError(
            f"{path} has a whitening folded in but the store {folder} has {has}; export the "
            f"student again with --store {folder}"
        )
    if list(settings["scales"]) != [1]:
        raise StoreError(
            f"the store {folder} is encoded at scales {list(settings['scales'])}, and an exported "
            "student encodes one: query it with the student's checkpoint (--network)"
        )
    _warn_of_calibration(info, database, path)
    return info


def _warn_of_calibration(info: OnnxStudentInfo, database: SearchDatabase, path: PathLike) -> None:
    """Say when an int8 file was calibrated on images of another size than the store's: asked
    for another size, and the longer side of its calibration images as calibrated not the
    store's size either (photos of the store's size, calibrated at a larger one, are not
    enlarged: they fit)."""
    asked = info.calibration_image_size
    if info.precision != "int8" or asked is None:
        return
    size = database.settings.get("image_size")
    if size is None or asked == size or info.calibrated_side == size:
        return
    side = info.calibrated_side or asked
    fix = (
        f"calibrate it on photos of at least {size} px (--calibration), with --store {database.folder}"
        if side < min(asked, size)  # its photos were smaller than both sizes: another size would not change them
        else f"export it with --store {database.folder} (or --image-size {size})"
    )
    log.warning(
        ">> %s was calibrated on images of %d px and the store %s holds images of %d px: its int8 ranges may not "
        "fit these queries; %s",
        path,
        side,
        database.folder,
        size,
        fix,
    )


def _same_teacher(info: OnnxStudentInfo, database: SearchDatabase, path: PathLike) -> bool:
    """Whether an exported student's teacher is the store's network: by fingerprint where the
    file records one, else by name (said, for a checkpoint: any file of that name passes)."""
    if info.teacher_fingerprint:
        return info.teacher_fingerprint == database.settings["fingerprint"]
    same = info.teacher == database.settings["network"]
    if same and NetworkSpec.parse(str(info.teacher)).source is Source.CHECKPOINT:
        log.warning(
            ">> the store %s is checked against %s's teacher %s by its file name only: the file records no teacher "
            "fingerprint (its teacher's checkpoint was not on the machine that exported it)",
            database.folder,
            path,
            info.teacher,
        )
    return same


def query_database_onnx(
    database: SearchDatabase,
    path: PathLike,
    images: Sequence[str],
    k: int = 10,
    bbxs: Optional[Sequence[Optional[BBox]]] = None,
    reranking: Reranking = Reranking(),
) -> List[Hits]:
    """Encode query images with an exported student (onnxruntime) and search the store's database with them.

    The file is checked with `check_onnx_student`; the queries are encoded at the store's
    image size, resized as aml resizes, and whitened like the database unless the file has the
    store's whitening folded in.

    Args:
        database: the store's database.
        path: the exported student (``student.onnx`` or ``student-int8.onnx``).
        images: the query images.
        k: results per query.
        bbxs: per query image, a crop box (x1, y1, x2, y2) or None.
        reranking: its ``qe`` and ``superglobal``, as `query_database` applies them.

    Returns:
        Per query, ``{"query": path, "results": [{"image": path, "score": score}, ...]}``,
        as `query_database`.

    Examples:
        >>> from aml.search import open_database, query_database_onnx
        >>> hits = query_database_onnx(open_database("photos.store"), "deploy/student-int8.onnx",
        ...                            ["q.jpg"])  # doctest: +SKIP
        >>> hits[0]["results"][0]["image"]  # doctest: +SKIP
        '/photos/0042.jpg'
    """
    info = _check_onnx_student_once(database, path)
    check_results_wanted(k)
    session = onnx_session(path)
    width = session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != info.dim:
        raise StoreError(
            f"{path} outputs {width}-d descriptors but its metadata says {info.dim}: the file was edited "
            f"or damaged; export it again: {REEXPORT}"
        )
    check_image_list(images)
    if len(images) == 0:
        return []  # as query_database
    _warn_turned(images)
    queries = describe_with_onnx(session, images, database.settings["image_size"], bbxs, source=path)
    if queries.shape[0] != info.dim:
        raise StoreError(
            f"{path} gives {queries.shape[0]}-d descriptors but its metadata says {info.dim}: the file was edited "
            f"or damaged; export it again: {REEXPORT}"
        )
    return _hits(
        database, images, *database.search(queries, k, prewhitened=info.whitening is not None, reranking=reranking)
    )
