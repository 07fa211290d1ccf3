"""An exported student (ONNX, float32 or int8) as an encoder: which network it is, read from
the aml metadata of the file, and descriptors of images computed with onnxruntime.

`aml.export` writes `OnnxStudentInfo` into every ONNX file it makes (the model's
``metadata_props``, keys prefixed ``aml.``); `aml.search` reads it back to refuse a file
made for another teacher's store. onnx and onnxruntime are an optional extra
(``pip install -e .[export]``), imported only when a function here needs them.
"""

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aml.data.images import BBox, check_boxes, check_image_list, check_image_size, load_and_resize
from aml.utils.atomic import atomic_path
from aml.utils.bounds import digits
from aml.utils.errors import ConfigError, DataError
from aml.utils.types import PathLike

__all__ = [
    "OnnxStudentError",
    "OnnxStudentInfo",
    "describe_with_onnx",
    "image_array",
    "onnx_session",
    "read_onnx_metadata",
    "seconds_per_image",
    "whitening_digest",
    "write_onnx_metadata",
]

PREFIX = "aml."
PRECISIONS = ("float32", "int8")
REEXPORT = "python -m aml.export --network STUDENT --out DIR --teacher TEACHER"


class OnnxStudentError(DataError):
    """An ONNX file that cannot be read, has no aml metadata, or does not fit a store.

    Examples:
        >>> from aml.descriptors.onnx_student import OnnxStudentError, onnx_session
        >>> try:
        ...     onnx_session("no/such.onnx")
        ... except OnnxStudentError as err:
        ...     print(err)
        no/such.onnx does not exist; export the student with: python -m aml.export --network STUDENT ...
    """


#: the fields of `OnnxStudentInfo` that files of earlier exports lack (read as None)
_ADDED_LATER = ("calibrated_side",)


@dataclass(frozen=True)
class OnnxStudentInfo:
    """What an exported student is: written into the ONNX file, checked by the query side.

    Attributes:
        student: the student's name (a checkpoint's file name without ``.pth...``).
        fingerprint: the student's weights' fingerprint.
        teacher: the teacher's network name as a store records it (a published teacher's list
            name, a checkpoint's file name); None: the student records no teacher.
        teacher_fingerprint: the teacher's fingerprint, when its checkpoint was on the exporting
            machine; None: only the name is checked.
        dim: the descriptor dimension.
        whitening: `whitening_digest` of the whitening folded in; None: none.
        precision: ``"float32"`` or ``"int8"``.
        calibration_image_size: the image size the int8 file was calibrated at; None for float32.
        calibration_images: how many images it was calibrated on; None for float32.
        calibrated_side: the longer side of the largest calibration image as calibrated (less
            than ``calibration_image_size`` where the images are smaller: none is enlarged);
            None for float32, or a file of an export that did not record it.

    Examples:
        >>> from aml.descriptors.onnx_student import OnnxStudentInfo
        >>> info = OnnxStudentInfo("student", "0123", "vgg16-teacher", None, 512, None, "int8", 362, 100)
        >>> props = info.props()
        >>> props["aml.dim"], props["aml.teacher_fingerprint"], props["aml.calibration_image_size"]
        ('512', '', '362')
        >>> OnnxStudentInfo.from_props(props, "student-int8.onnx") == info
        True
    """

    student: str
    fingerprint: str
    teacher: Optional[str]
    teacher_fingerprint: Optional[str]
    dim: int
    whitening: Optional[str]
    precision: str = "float32"
    calibration_image_size: Optional[int] = None
    calibration_images: Optional[int] = None
    calibrated_side: Optional[int] = None

    def props(self) -> Dict[str, str]:
        """The metadata as ONNX ``metadata_props`` (strings; None is the empty string)."""
        return {
            PREFIX + field.name: "" if getattr(self, field.name) is None else str(getattr(self, field.name))
            for field in dataclasses.fields(self)
        }

    @classmethod
    def from_props(cls, props: Dict[str, str], path: PathLike) -> "OnnxStudentInfo":
        """The metadata of `props`, read back; an `OnnxStudentError` naming ``path`` when a key
        is missing or malformed."""
        values: Dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = PREFIX + field.name
            if key not in props and field.name in _ADDED_LATER:
                props = {**props, key: ""}  # a file of an export that did not record it
            if key not in props:
                raise OnnxStudentError(
                    f"{path} has aml metadata without {key}: it was edited or made by another "
                    f"version; export the student again ({REEXPORT})"
                )
            text = props[key]
            number = field.type in (int, Optional[int])
            if number and text != "" and not (digits(text) or 0) > 0:
                raise OnnxStudentError(
                    f"{path}: its metadata {key} is {text!r}, not a positive integer: it was edited or is damaged; "
                    f"export the student again ({REEXPORT})"
                )
            values[field.name] = None if text == "" else int(text) if number else text
        if values["dim"] is None or values["precision"] not in PRECISIONS:
            raise OnnxStudentError(
                f"{path}: its metadata says dim {values['dim']} and precision {values['precision']!r} (one of "
                f"{', '.join(PRECISIONS)}): it was edited or is damaged; export the student again ({REEXPORT})"
            )
        return cls(**values)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxStudentError("ONNX files need the onnx package: pip install onnx onnxruntime") from None
    return onnx


def onnx_installed() -> bool:
    """Whether the onnx package, which reads and writes ONNX files' metadata, is installed."""
    try:
        _onnx()
    except OnnxStudentError:
        return False
    return True


def write_onnx_metadata(path: PathLike, info: OnnxStudentInfo) -> Path:
    """Write `info` into the ``metadata_props`` of an ONNX file (in place; other keys stay).

    Args:
        path: the ONNX file.
        info: what the file is.

    Returns:
        ``path``.

    Examples:
        >>> from aml.descriptors.onnx_student import write_onnx_metadata
        >>> write_onnx_metadata("deploy/student.onnx", info)  # doctest: +SKIP
        PosixPath('deploy/student.onnx')
    """
    onnx = _onnx()
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props if not p.key.startswith(PREFIX)}
    props.update(info.props())
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(path) as temporary:  # rewritten whole or not at all
        onnx.save(model, str(temporary))
    return Path(path)


def read_onnx_metadata(path: PathLike) -> Optional[OnnxStudentInfo]:
    """The aml metadata of an ONNX file, or None when it has none.

    Args:
        path: the ONNX file.

    Returns:
        What the file is, or None for an ONNX file that aml did not write.

    Raises:
        OnnxStudentError: when the file is missing or is not a readable ONNX model.

    Examples:
        >>> from aml.descriptors.onnx_student import read_onnx_metadata
        >>> read_onnx_metadata("deploy/student-int8.onnx").precision  # doctest: +SKIP
        'int8'
    """
    onnx = _onnx()
    _exists(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: any failure is a damaged file
        raise OnnxStudentError(
            f"{path} is not a readable ONNX model ({type(err).__name__}): it is damaged or not "
            f"ONNX; export the student again ({REEXPORT})"
        ) from None
    props = {p.key: p.value for p in model.metadata_props}
    if not any(key.startswith(PREFIX) for key in props):
        return None
    return OnnxStudentInfo.from_props(props, path)


def _exists(path: PathLike) -> None:
    if not isinstance(path, (str, os.PathLike)):  # Path() of a network was a TypeError deep in pathlib
        raise ConfigError(
            f"an exported student is named by the path of its ONNX file, got a {type(path).__name__}; a network "
            "in memory queries with aml.search.query_database"
        )
    if Path(path).is_dir():
        raise OnnxStudentError(f"{path} is a folder, not an ONNX file; give student.onnx or student-int8.onnx in it")
    if not Path(path).is_file():
        raise OnnxStudentError(f"{path} does not exist; export the student with: {REEXPORT}")
    if Path(path).stat().st_size == 0:  # protobuf reads an empty model: "no aml metadata" named nothing
        raise OnnxStudentError(
            f"{path} is empty (0 bytes): the copy or the export stopped; export it again ({REEXPORT})"
        )


def onnx_session(path: PathLike, threads: int = 1) -> Any:
    """An onnxruntime CPU session of an ONNX file.

    Args:
        path: the ONNX file.
        threads: ``intra_op_num_threads`` (1: one core, as a phone's query runs).

    Returns:
        The ``onnxruntime.InferenceSession``.

    Raises:
        OnnxStudentError: when onnxruntime is missing, or the file is missing or damaged.

    Examples:
        >>> from aml.descriptors.onnx_student import onnx_session
        >>> session = onnx_session("deploy/student.onnx")  # doctest: +SKIP
        >>> [i.name for i in session.get_inputs()]  # doctest: +SKIP
        ['image']
    """
    try:
        import onnxruntime
    except ImportError:
        raise OnnxStudentError("running ONNX files needs onnxruntime: pip install onnxruntime") from None
    _exists(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings of the graph optimiser are not the user's business
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise OnnxStudentError(
            f"onnxruntime cannot load {path} ({str(err).splitlines()[0][:160]}): it is damaged "
            f"or not ONNX; export the student again ({REEXPORT})"
        ) from None


def whitening_digest(m: np.ndarray, P: np.ndarray) -> str:
    """A short content hash of a whitening (m, P), to tell which one a file has folded in.

    Args:
        m: the mean, D values.
        P: the D x D projection.

    Returns:
        12 hex digits (of the float32 values).

    Examples:
        >>> import numpy as np
        >>> from aml.descriptors.onnx_student import whitening_digest
        >>> whitening_digest(np.zeros(3), np.eye(3)) == whitening_digest(np.zeros((3, 1)), np.eye(3, dtype=np.float32))
        True
        >>> whitening_digest(np.zeros(3), np.eye(3)) == whitening_digest(np.ones(3), np.eye(3))
        False
    """
    digest = hashlib.sha1()
    for array in (m, P):
        digest.update(np.ascontiguousarray(np.asarray(array, dtype=np.float32).ravel()).tobytes())
    return digest.hexdigest()[:12]


def image_array(path: PathLike, image_size: Optional[float], bbx: Optional[BBox] = None) -> np.ndarray:
    """An image as the exported graph takes it: loaded, cropped and shrunk as aml does, RGB in [0, 1].

    Args:
        path: the image file.
        image_size: the longer side it is shrunk to (`aml.data.images.load_and_resize`); None: as is.
        bbx: a crop box (x1, y1, x2, y2) or None.

    Returns:
        1 x 3 x H x W float32.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> from aml.descriptors.onnx_student import image_array
        >>> with tempfile.NamedTemporaryFile(suffix=".png") as f:
        ...     Image.new("RGB", (200, 100), (255, 0, 0)).save(f.name)
        ...     x = image_array(f.name, 64)
        >>> x.shape, float(x[0, 0].max()), float(x[0, 1].max())
        ((1, 3, 32, 64), 1.0, 0.0)
    """
    check_image_size(image_size)
    image = load_and_resize(path, image_size, bbx)
    return np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255)


def _encoded(session: Any, pixels: np.ndarray, path: PathLike, source: PathLike) -> np.ndarray:
    """One image's 1 x D descriptor; what onnxruntime refuses (an image too small for the
    network's kernels, a graph that needs another input) names the image and the file."""
    try:
        return session.run(None, {"image": pixels})[0]
    except Exception as err:  # onnxruntime's own classes (InvalidArgument, Fail, ...) derive from Exception only
        if not type(err).__module__.startswith("onnxruntime"):
            raise
        height, width = pixels.shape[-2:]
        raise OnnxStudentError(
            f"{source} cannot encode {path} ({width} x {height} pixels as given to it: "
            f"{str(err).splitlines()[0][:200]}); an image that small is too small for the network: leave it "
            "out, or give a larger image or box"
        ) from None


def describe_with_onnx(
    session: Any,
    images: Sequence[PathLike],
    image_size: Optional[float],
    bbxs: Optional[Sequence[Optional[BBox]]] = None,
    source: Optional[PathLike] = None,
) -> np.ndarray:
    """Descriptors of images by an exported student, one image per run (sizes differ).

    Args:
        session: an onnxruntime session of an exported student (`onnx_session`).
        images: the image files.
        image_size: the longer side images are shrunk to.
        bbxs: per image, a crop box or None.
        source: the ONNX file, as errors name it (default: the file the session was made from).

    Returns:
        D x N float32 descriptors, one column per image (as `aml.descriptors.describe_images`).

    Raises:
        ConfigError: when ``images`` is not a list of some image files (one path, none).
        OnnxStudentError: naming the file and the first image, when a descriptor holds NaN or
            infinite values (a damaged or badly quantized file), or naming the image that
            onnxruntime cannot run (one too small for the network).

    Examples:
        >>> from aml.descriptors.onnx_student import describe_with_onnx, onnx_session
        >>> describe_with_onnx(onnx_session("deploy/student.onnx"), ["query.jpg"], 1024).shape  # doctest: +SKIP
        (512, 1)
    """
    check_image_list(images)
    if len(images) == 0:
        raise ConfigError("no images to encode: give at least one image file")
    check_boxes(len(images), bbxs)
    check_image_size(image_size)
    if not callable(getattr(session, "run", None)):  # a path given for the session
        raise ConfigError(
            f"the session is a {type(session).__name__}, not an onnxruntime session: open the file with "
            "onnx_session(path) first"
        )
    boxes = list(bbxs) if bbxs is not None else [None] * len(images)
    source = source or getattr(session, "_model_path", None) or "the ONNX file"  # onnxruntime keeps the path
    columns = [
        _encoded(session, image_array(path, image_size, box), path, source)[0]
        for path, box in zip(images, boxes, strict=True)
    ]
    vecs = np.ascontiguousarray(np.stack(columns, axis=1), dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(vecs).all(axis=0))
    if bad.size:
        raise OnnxStudentError(
            f"{source} gives NaN or infinite descriptors for {bad.size} of {vecs.shape[1]} images "
            f"(first: {images[bad[0]]}): the file is damaged; export the student again "
            f"({REEXPORT})"
        )
    return vecs


def seconds_per_image(session: Any, shape: Tuple[int, int], repeats: int = 5) -> float:
    """The median time of one forward of a 1 x 3 x H x W image, after one untimed warm-up run.

    Args:
        session: an onnxruntime session.
        shape: (height, width) of the image.
        repeats: the timed runs.

    Returns:
        Seconds per image (the median of ``repeats`` runs).

    Examples:
        >>> from aml.descriptors.onnx_student import onnx_session, seconds_per_image
        >>> seconds_per_image(onnx_session("deploy/student-int8.onnx"), (362, 272))  # doctest: +SKIP
        0.0154
    """
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, *shape), dtype=np.float32)
    session.run(None, {"image": x})
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times))
