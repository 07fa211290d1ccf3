"""The int8 student: the exported ONNX graph quantized with onnxruntime's static quantization,
calibrated on images resized as aml resizes them.

The format is QDQ (QuantizeLinear/DequantizeLinear pairs around float operators), which
onnxruntime's CPU provider fuses into integer kernels when it loads the file, and which other
providers (NNAPI, XNNPACK, QNN on phones) read too; activations are uint8, weights int8 per
output channel. By default only the trunk (the nodes of ``net.features``: convolutions and
their activations) is quantized: the input normalisation, GeM's powers and mean, the L2
normalisation and a folded whitening stay in float (docs/search-export.md measures the
alternatives).
"""

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set

import numpy as np

from aml.data.images import image_size as stored_size
from aml.descriptors.onnx_student import image_array
from aml.export.errors import ExportError
from aml.utils.atomic import DiskFull, atomic_path, is_disk_full
from aml.utils.errors import ConfigError, lookup
from aml.utils.types import PathLike

__all__ = ["Int8Settings", "QUANTIZED_NODES", "quantize_student"]

log = logging.getLogger(__name__)
TRUNK_SCOPE = "/features/"  # the ONNX exporter names the trunk's nodes by their module path (net.features)


def shape_arithmetic(graph: Any) -> Set[str]:
    """The names of the nodes that compute on a tensor's shape: a Shape or Size node, and every
    node whose inputs (constants aside) all come from such nodes. Padding that depends on the
    image's size (TensorFlow's "same" padding of EfficientNets) is computed so, partly in float:
    quantized to uint8, its amounts come out wrong (wrong descriptors, or a failed convolution).

    Args:
        graph: an ONNX graph (its nodes in topological order, as ONNX requires).

    Returns:
        The node names.
    """
    constant = {initializer.name for initializer in graph.initializer}
    from_shapes: Set[str] = set()
    names: Set[str] = set()
    for node in graph.node:
        if node.op_type == "Constant":
            constant.update(node.output)
            continue
        inputs = [name for name in node.input if name and name not in constant]
        if node.op_type in ("Shape", "Size") or (inputs and all(name in from_shapes for name in inputs)):
            from_shapes.update(node.output)
            names.add(node.name)
    return names


def _trunk_nodes(graph: Any) -> List[str]:
    """The trunk's nodes (those of ``net.features``)."""
    return [node.name for node in graph.node if node.name.startswith(TRUNK_SCOPE)]


#: which nodes are quantized: name -> (the graph's nodes -> the names to quantize; None: all that onnxruntime
#: can); the shape arithmetic (`shape_arithmetic`) stays in float in either case
QUANTIZED_NODES: Dict[str, Callable[[Any], Optional[List[str]]]] = {
    "trunk": _trunk_nodes,
    "all": lambda graph: None,
}
QUANT_FORMATS = ("qdq", "qoperator")  # onnxruntime's QuantFormat.QDQ and QuantFormat.QOperator


@dataclass(frozen=True)
class Int8Settings:
    """How the int8 student is made.

    Attributes:
        calibration: the calibration images (paths).
        image_size: the longer side they are shrunk to (the store's or the given image size).
        quant_format: ``"qdq"`` or ``"qoperator"`` (onnxruntime's ``QuantFormat``).
        quantized: which nodes are quantized (a `QUANTIZED_NODES` key).
        per_channel: weights quantized per output channel.

    Examples:
        >>> from aml.export import Int8Settings
        >>> Int8Settings(("a.jpg", "b.jpg"), 362).quant_format
        'qdq'
        >>> Int8Settings(("a.jpg",), 362, quantized="head")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: unknown quantized nodes 'head'; choose one of all, trunk
    """

    calibration: Sequence[str]
    image_size: int
    quant_format: str = "qdq"
    quantized: str = "trunk"
    per_channel: bool = True

    def __post_init__(self):
        lookup(QUANTIZED_NODES, self.quantized, "quantized nodes")
        lookup(dict.fromkeys(QUANT_FORMATS), self.quant_format, "quantization format", QUANT_FORMATS)
        if not self.calibration:
            raise ConfigError("int8 quantization needs calibration images")

    def calibrated_size(self) -> int:
        """The longer side of the largest calibration image as calibrated.

        That is ``image_size``, or less where every image is smaller (images are never
        enlarged): the size the int8 ranges fit. The sizes are read from the files' headers.

        Returns:
            The longer side, in pixels.

        Examples:
            >>> from aml.export import Int8Settings
            >>> Int8Settings(("photo_4000x3000.jpg",), 1024).calibrated_size()  # doctest: +SKIP
            1024
        """
        return min(self.image_size, max(max(stored_size(path)) for path in self.calibration))


def _calibration_reader(images: Sequence[str], image_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """The calibration images one by one (their sizes differ), read when asked for."""

        def __init__(self):
            self.pending = iter(images)
            self.last: Optional[str] = None  # the image given last, and its size as given: what a failure names
            self.shape: Optional[Sequence[int]] = None

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            path = next(self.pending, None)
            if path is None:
                return None
            pixels = image_array(path, image_size)
            self.last, self.shape = path, pixels.shape
            return {"image": pixels}

    return Reader()


@contextlib.contextmanager
def _named_calibration_failure(reader: Any, settings: "Int8Settings") -> Iterator[None]:
    """An image onnxruntime cannot calibrate on (one too small for the network's kernels) as one
    line naming it, instead of onnxruntime's traceback."""
    try:
        yield
    except Exception as err:  # onnxruntime's own classes derive from Exception only
        if not type(err).__module__.startswith("onnxruntime") or reader.last is None:
            raise
        height, width = reader.shape[-2:]
        raise ExportError(
            f"calibration image {reader.last} ({width} x {height} pixels at --image-size {settings.image_size}) "
            f"cannot go through the network ({str(err).splitlines()[0][:160]}); an image that small is too small "
            "for it: leave it out of --calibration, or raise --image-size"
        ) from None


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """The root logger's handlers as they were before: onnxruntime's quantizer logs through
    ``logging.info``, which gives a root logger without handlers one for good (a caller's
    later ``logging.basicConfig`` then did nothing)."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    try:
        yield
    finally:
        root.handlers[:] = handlers


class _PerTensorFallbacks(logging.Filter):
    """Drops onnxruntime's warning for each weight of one dimension (a norm's scale, a ViT has
    dozens) that per-channel quantization quantizes per tensor instead, keeping their names."""

    MESSAGE = "is out-of-range for weight"

    def __init__(self) -> None:
        super().__init__()
        self.names: List[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.MESSAGE not in message:
            return True
        self.names.append(message.split("'")[1] if message.count("'") >= 2 else message)
        return False


@contextlib.contextmanager
def _per_tensor_fallbacks_said() -> Iterator[None]:
    """One line for onnxruntime's warnings of weights quantized per tensor (it logs them on the
    root logger, one per weight)."""
    root, fallbacks = logging.getLogger(), _PerTensorFallbacks()
    root.addFilter(fallbacks)
    try:
        yield
    finally:
        root.removeFilter(fallbacks)
        if fallbacks.names:
            log.info(
                ">> int8: %d weights of one dimension (such as %s) quantized per tensor, not per channel",
                len(fallbacks.names),
                fallbacks.names[0],
            )


def _prepare(quant_pre_process: Callable, fp32: PathLike, prepared: Path) -> None:
    """onnxruntime's ``quant_pre_process``; without its symbolic shape inference where that
    fails (a ViT's resized position embeddings: a TypeError deep in onnxruntime). Its own
    tracebacks of a failed optimisation, which it goes on without, are kept from the terminal;
    a full temporary folder is said as such."""
    with _quiet(ONNXRUNTIME_PREPARATION_LOGGER):
        try:
            quant_pre_process(str(fp32), str(prepared))
        except Exception as err:  # onnxruntime's shape inference raises whatever its code meets
            log.info(">> int8: symbolic shape inference failed on %s (%s): prepared without it", fp32, err)
            try:
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            except Exception as again:
                if is_disk_full(again):
                    raise DiskFull(_temporary_folder_full()) from again
                raise ExportError(
                    f"onnxruntime cannot prepare {fp32} for quantization ({type(again).__name__}: {again}); export "
                    "without --int8, or quantize the float32 file with onnxruntime's tools yourself"
                ) from again


def _temporary_folder_full() -> str:
    return (
        f"no space left in the temporary folder {tempfile.gettempdir()} for onnxruntime's int8 quantization: free "
        "space there, or set TMPDIR to a folder with room"
    )


@contextlib.contextmanager
def _temporary_room_said(prepared: Path) -> Iterator[None]:
    """A full disk, or a graph read back cut (a protobuf DecodeError), during onnxruntime's
    calibration with too little room left beside ``prepared`` (in the temporary folder) for
    its two copies of the graph is said as such: onnx's shape inference writes a cut file there
    without an error. Any other failure (an image too small for the network) is its own."""
    try:
        yield
    except Exception as err:
        cut = is_disk_full(err) or type(err).__name__ == "DecodeError" or "Error parsing message" in str(err)
        if cut and shutil.disk_usage(prepared.parent).free < 2 * prepared.stat().st_size:
            raise DiskFull(_temporary_folder_full()) from err
        raise


#: where onnxruntime logs a failed graph optimisation of ``quant_pre_process`` with its traceback
ONNXRUNTIME_PREPARATION_LOGGER = "onnxruntime.quantization.shape_inference"


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` says nothing below CRITICAL meanwhile."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_student(fp32: PathLike, out: PathLike, settings: Int8Settings) -> Path:
    """Quantize an exported float32 student to int8 (onnxruntime's static quantization).

    The graph is first prepared with onnxruntime's ``quant_pre_process`` (shape inference and
    graph optimisation), then calibrated (min-max) on ``settings.calibration``.

    Args:
        fp32: the float32 ONNX file (`aml.export.export_onnx`).
        out: the int8 ONNX file to write.
        settings: the calibration images and how to quantize.

    Returns:
        ``out``.

    Raises:
        ExportError: when onnxruntime's quantization is missing, or no node of the trunk is found.

    Examples:
        >>> from aml.export import Int8Settings, quantize_student
        >>> settings = Int8Settings(["calibration/0.jpg", "calibration/1.jpg"], 362)  # doctest: +SKIP
        >>> quantize_student("deploy/student.onnx", "deploy/student-int8.onnx", settings)  # doctest: +SKIP
        PosixPath('deploy/student-int8.onnx')
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExportError("--int8 needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        _prepare(quant_pre_process, fp32, prepared)
        graph = onnx.load(str(prepared)).graph
        nodes = QUANTIZED_NODES[settings.quantized](graph)
        if nodes is not None and not nodes:
            raise ExportError(f"{fp32} has no node named {TRUNK_SCOPE}...: not a graph of aml.export; export it again")
        in_float = shape_arithmetic(graph)
        log.info(
            ">> int8: calibrating on %d images at %d px, quantizing %s (%d nodes of shape arithmetic in float)",
            len(settings.calibration),
            settings.image_size,
            "every node onnxruntime can" if nodes is None else f"{len(set(nodes) - in_float)} trunk nodes",
            len(in_float),
        )
        reader = _calibration_reader(settings.calibration, settings.image_size)
        with (
            atomic_path(out) as temporary,
            _root_logger_kept(),
            _per_tensor_fallbacks_said(),
            _named_calibration_failure(reader, settings),
            _temporary_room_said(prepared),
        ):
            quantize_static(
                str(prepared),
                str(temporary),
                reader,
                quant_format=formats[settings.quant_format],
                per_channel=settings.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                nodes_to_exclude=sorted(in_float),  # whichever nodes are quantized
                calibrate_method=CalibrationMethod.MinMax,
            )
    return Path(out)
