"""The student for deployment: one self-contained graph from an RGB image to the descriptor
the teacher's database is searched with.

`DeployedStudent` takes B x 3 x H x W images with values in [0, 1] (any H, W),
normalises them with the network's mean/std, runs the trunk, GeM pooling and L2
normalisation exactly as `ImageRetrievalNet.descriptors`, and optionally applies the
teacher's learned whitening (P (x - m), then L2) so that queries land in the whitened space
of a store. It is written as TorchScript (traced) and ONNX (height and width dynamic), and
`check_exports` compares both with PyTorch on generated images of several sizes. Every ONNX
file carries what it is (`aml.descriptors.onnx_student.OnnxStudentInfo`: the student, its
teacher, the dimension, the whitening folded in), and `quantize_student` makes the int8 one.
"""

import contextlib
import copy
import dataclasses
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from aml.export.errors import ExportError
from aml.export.quantization import Int8Settings, quantize_student
from aml.export.report import INT8_REPORT, is_int8_report
from aml.descriptors.onnx_student import (
    OnnxStudentError,
    OnnxStudentInfo,
    describe_with_onnx,
    onnx_installed,
    onnx_session,
    read_onnx_metadata,
    whitening_digest,
    write_onnx_metadata,
)
from aml.networks.fingerprint import network_fingerprint
from aml.networks.loading import NetworkSpec, check_network
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.utils.atomic import atomic_path, atomic_write, staged, uninterrupted
from aml.utils.plain_files import begins_as
from aml.utils.types import PathLike

log = logging.getLogger(__name__)
#: what `export_student` writes, by kind
EXPORTED_FILES = {"torchscript": "student.pt", "onnx": "student.onnx", "int8": "student-int8.onnx"}
#: how the entry of a TorchScript archive that holds `DeployedStudent`'s traced code begins
#: (``student.py``, or ``student/___torch_mangle_N.py`` when a process traced it before)
TORCHSCRIPT_MARK = "/code/__torch__/aml/export/student"
CHECK_SIZES: Tuple[Tuple[int, int], ...] = ((224, 224), (180, 300), (320, 240))


class DeployedStudent(nn.Module):
    """The student for deployment: RGB images in [0, 1] to descriptors, whitening folded in.

    It normalises B x 3 x H x W images with the network's mean/std, runs
    `aml.networks.ImageRetrievalNet.descriptors`, and applies the teacher's whitening
    when given (P (x - m), then L2), so that queries land in the whitened space of a store.

    Args:
        net: the student (put in eval mode).
        whitening: the teacher's whitening (m, P), for the student's dimension; None: none.

    Raises:
        ExportError: when the whitening is for another dimension than the student's.

    Examples:
        >>> import torch
        >>> from aml.export import DeployedStudent
        >>> from aml.networks import build_network
        >>> model = DeployedStudent(build_network("resnet18", pretrained=False))
        >>> model(torch.rand(1, 3, 48, 32)).shape
        torch.Size([1, 512])
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor
    m: torch.Tensor
    P: torch.Tensor

    def __init__(self, net: ImageRetrievalNet, whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(net.meta["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(net.meta["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.whitened = whitening is not None
        if whitening is not None:
            m, P = whitening
            dim = net.meta["outputdim"]
            shape = np.asarray(P).shape
            if shape != (dim, dim) or np.asarray(m).size != dim:
                reduced = len(shape) == 2 and shape[1] == dim and np.asarray(m).size == dim
                raise ExportError(
                    f"the whitening reduces {dim}-d descriptors to {shape[0]}-d, and an export folds in only a "
                    "whitening that keeps the dimension (as a store's does)"
                    if reduced
                    else f"the whitening is for {shape[-1]}-d descriptors but the student outputs {dim}-d ones; "
                    "use the whitening of its teacher's store"
                )
            self.register_buffer("m", torch.as_tensor(np.asarray(m, dtype=np.float32).reshape(1, -1)))
            self.register_buffer("P", torch.as_tensor(np.asarray(P, dtype=np.float32)))
        self.eval()  # the wrapper too: exporters restore its mode, and train() would reach the network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Descriptors of RGB images.

        Args:
            image: B x 3 x H x W RGB images with values in [0, 1] (any H, W).

        Returns:
            B x D descriptors, L2-normalised (after the whitening, when one is folded in).
        """
        x = self.net.descriptors((image - self.mean) / self.std)
        if self.whitened:
            x = (x - self.m) @ self.P.t()
            x = x / (torch.linalg.vector_norm(x, ord=2, dim=1, keepdim=True) + 1e-6)
        return x


def generated_images(sizes: Sequence[Tuple[int, int]] = CHECK_SIZES, seed: int = 0) -> List[torch.Tensor]:
    """One smooth random 1 x 3 x H x W image in [0, 1] per size.

    Low frequencies plus noise, so that activations look like a photograph's rather than
    white noise.

    Args:
        sizes: (height, width) of each image.
        seed: the seed of the draw.

    Returns:
        The images.

    Examples:
        >>> from aml.export import generated_images
        >>> [tuple(image.shape) for image in generated_images(((64, 48), (32, 32)))]
        [(1, 3, 64, 48), (1, 3, 32, 32)]
    """
    generator = torch.Generator().manual_seed(seed)
    images = []
    for height, width in sizes:
        coarse = torch.rand(1, 3, max(2, height // 16), max(2, width // 16), generator=generator)
        smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        images.append((0.8 * smooth + 0.2 * torch.rand(1, 3, height, width, generator=generator)).clamp(0, 1))
    return images


def export_torchscript(model: DeployedStudent, path: PathLike, example: torch.Tensor) -> Path:
    """Trace a deployed student and save it as TorchScript (loadable with ``torch.jit.load``).

    Args:
        model: the deployed student.
        path: the file to write.
        example: the input to trace with, 1 x 3 x H x W in [0, 1].

    Returns:
        ``path``.

    Examples:
        >>> from aml.export import DeployedStudent, export_torchscript, generated_images
        >>> model = DeployedStudent(student)  # doctest: +SKIP
        >>> export_torchscript(model, "student.pt", generated_images()[0])  # doctest: +SKIP
        PosixPath('student.pt')
    """
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python conditions on shapes (GeM's p): the check below proves the size stays free
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # TorchScript is frozen upstream
        traced = torch.jit.trace(model, example, check_trace=False)
    data = traced.save_to_buffer()  # in memory: torch's zip writer aborts the process on a full disk
    atomic_write(path, lambda out: out.write(data))
    return Path(path)


def _antialiased_bicubic(g, image, output_size, align_corners, scales_h=None, scales_w=None):
    """ONNX's Resize for torch's antialiased bicubic interpolation (``aten::_upsample_bicubic2d_aa``,
    which timm's ViTs resample their position embeddings with): cubic with a = -0.5, the taps
    outside the input dropped and the kernel widened when shrinking, as torch (and PIL) compute it."""
    shape = g.op("Shape", image)
    batch_and_channels = g.op(
        "Slice", shape, g.op("Constant", value_t=torch.tensor([0])), g.op("Constant", value_t=torch.tensor([2]))
    )
    sizes = g.op("Concat", batch_and_channels, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: INT64
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op(
        "Resize",
        image,
        empty,
        empty,
        sizes,
        mode_s="cubic",
        cubic_coeff_a_f=-0.5,
        antialias_i=1,
        exclude_outside_i=1,
        coordinate_transformation_mode_s="half_pixel",
    )


#: operators that the ONNX exporter lacks, with the opset that has them: name -> (opset, symbolic)
ONNX_SYMBOLICS = {"aten::_upsample_bicubic2d_aa": (18, _antialiased_bicubic)}


@contextlib.contextmanager
def _onnx_symbolics(opset: int) -> Iterator[None]:
    """`ONNX_SYMBOLICS` that ``opset`` has, registered with the exporter for one export only."""
    registered = [(name, at) for name, (at, _) in ONNX_SYMBOLICS.items() if opset >= at]
    for name, at in registered:
        torch.onnx.register_custom_op_symbolic(name, ONNX_SYMBOLICS[name][1], at)
    try:
        yield
    finally:
        for name, at in registered:
            torch.onnx.unregister_custom_op_symbolic(name, at)


def export_onnx(model: DeployedStudent, path: PathLike, example: torch.Tensor, opset: int = 17) -> Path:
    """Export a deployed student to ONNX with batch, height and width dynamic.

    The graph's input is ``image``, its output ``descriptor``. A trunk that needs a later
    opset says so (``onnx_opset``: a ViT's resampled position embeddings need 18).

    Args:
        model: the deployed student.
        path: the file to write.
        example: the input to export with, 1 x 3 x H x W in [0, 1].
        opset: the ONNX opset version (at least).

    Returns:
        ``path``.

    Examples:
        >>> from aml.export import DeployedStudent, export_onnx, generated_images
        >>> model = DeployedStudent(student)  # doctest: +SKIP
        >>> export_onnx(model, "student.onnx", generated_images()[0])  # doctest: +SKIP
        PosixPath('student.onnx')
    """
    opset = max([opset] + [getattr(module, "onnx_opset", 0) for module in model.modules()])
    with torch.no_grad(), warnings.catch_warnings(), _onnx_symbolics(opset):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with atomic_path(path) as temporary:
            torch.onnx.export(
                model,
                (example,),
                str(temporary),
                input_names=["image"],
                output_names=["descriptor"],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "descriptor": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    return Path(path)


def check_exports(
    model: DeployedStudent, files: Dict[str, Path], images: Optional[Sequence[torch.Tensor]] = None
) -> Dict[str, float]:
    """Max absolute difference between PyTorch's descriptors and each exported file's.

    ``onnx`` runs through onnxruntime, and is skipped with a notice when it is not installed.

    Args:
        model: the deployed student the files were exported from.
        files: ``{"torchscript": path, "onnx": path}``, either or both.
        images: the images to compare on; None: `generated_images`.

    Returns:
        ``{kind: max abs difference}`` for each file checked.

    Examples:
        >>> from aml.export import check_exports
        >>> check_exports(model, {"torchscript": Path("deploy/student.pt")})  # doctest: +SKIP
        {'torchscript': 2.384185791015625e-07}
    """
    images = list(images) if images is not None else generated_images()
    with torch.no_grad():
        reference = [model(image).numpy() for image in images]
    diffs: Dict[str, float] = {}
    if "torchscript" in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(files["torchscript"]))
        with torch.no_grad():
            diffs["torchscript"] = max(
                float(np.abs(loaded(i).numpy() - r).max()) for i, r in zip(images, reference, strict=True)
            )
    if "onnx" in files:
        try:
            import onnxruntime
        except ImportError:
            log.warning(">> onnxruntime is not installed: the ONNX file is not checked (pip install onnxruntime)")
            return diffs
        # onnxruntime's own errors (Fail, InvalidGraph, RuntimeException...) share no base class
        try:
            session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ExportError(
                f"onnxruntime {onnxruntime.__version__} cannot load the ONNX graph of this network "
                f"({_first_line(err)}); export with --no-onnx (TorchScript only)"
            ) from None
        diffs["onnx"] = max(
            _onnx_difference(session, image, expected) for image, expected in zip(images, reference, strict=True)
        )
    return diffs


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:300] if str(err) else type(err).__name__


def _onnx_difference(session: Any, image: torch.Tensor, expected: np.ndarray) -> float:
    """The max abs difference of an onnxruntime session's descriptor of ``image`` to ``expected``."""
    try:
        got = session.run(None, {"image": image.numpy()})[0]
    except Exception as err:
        height, width = image.shape[-2:]
        raise ExportError(
            f"the ONNX graph of this network does not run in onnxruntime on a {height} x {width} image "
            f"({_first_line(err)}); export with --no-onnx (TorchScript only)"
        ) from None
    return float(np.abs(got - expected).max())


def student_info(
    net: ImageRetrievalNet,
    name: str = "student",
    teacher: Optional[str] = None,
    teacher_fingerprint: Optional[str] = None,
    whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None,
) -> OnnxStudentInfo:
    """What an exported student is, as its ONNX files record it.

    Args:
        net: the student.
        name: its name (a checkpoint's file name without ``.pth...``).
        teacher: its teacher as the user named it (a published name or a checkpoint path);
            None: the student's ``meta['teacher']``.
        teacher_fingerprint: the teacher's weights' fingerprint; None: the one the student
            was trained against (``meta['teacher_fingerprint']``), if it records one.
        whitening: the whitening folded in, or None.

    Returns:
        The float32 file's metadata; the teacher by the name a store records (a published
        teacher's list name, a checkpoint's file name).

    Examples:
        >>> from aml.export import student_info
        >>> from aml.networks import build_network
        >>> info = student_info(build_network("resnet18", pretrained=False), teacher="vgg16")
        >>> info.teacher, info.dim, info.whitening, info.precision
        ('retrievalSfM120k-vgg16-gem', 512, None, 'float32')
    """
    spec = teacher or net.meta.get("teacher")
    return OnnxStudentInfo(
        student=name,
        fingerprint=network_fingerprint(net),
        teacher=None if spec is None else NetworkSpec.parse(spec).name,
        teacher_fingerprint=teacher_fingerprint or net.meta.get("teacher_fingerprint"),
        dim=int(net.meta["outputdim"]),
        whitening=None if whitening is None else whitening_digest(*whitening),
    )


def int8_agreement(fp32: PathLike, int8: PathLike, images: Sequence[str], image_size: int) -> Dict[str, float]:
    """Cosine similarity of the int8 student's descriptors to the float32 one's, on images.

    Args:
        fp32: the float32 ONNX file.
        int8: the int8 ONNX file.
        images: the images to compare on.
        image_size: the longer side they are shrunk to.

    Returns:
        ``{"min": ..., "mean": ...}`` of the per-image cosines.

    Examples:
        >>> from aml.export import int8_agreement
        >>> int8_agreement("deploy/student.onnx", "deploy/student-int8.onnx", ["a.jpg", "b.jpg"], 362)  # doctest: +SKIP
        {'min': 0.991, 'mean': 0.997}
    """
    reference = describe_with_onnx(onnx_session(fp32), images, image_size, source=fp32)
    quantized = describe_with_onnx(onnx_session(int8), images, image_size, source=int8)
    cosines = (reference * quantized).sum(0) / (np.linalg.norm(reference, axis=0) * np.linalg.norm(quantized, axis=0))
    return {"min": float(cosines.min()), "mean": float(cosines.mean())}


def export_student(
    net: ImageRetrievalNet,
    folder: PathLike,
    whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    onnx: bool = True,
    tolerance: float = 1e-4,
    info: Optional[OnnxStudentInfo] = None,
    int8: Optional[Int8Settings] = None,
) -> Tuple[Dict[str, Path], Dict[str, float]]:
    """Export a student as TorchScript and ONNX, checked against PyTorch, and optionally as int8 ONNX.

    It writes ``student.pt`` (TorchScript) and ``student.onnx`` to ``folder`` and checks them
    on generated images of several sizes; with ``int8``, also ``student-int8.onnx``
    (`quantize_student`). Every ONNX file carries ``info`` in its metadata (the int8 one
    with its precision and calibration). The files are made and checked in a staging folder
    and moved into ``folder`` only when all of them passed: a refused or failed export leaves
    the files of an earlier one as they were.

    Args:
        net: the student (a copy of it is exported, in float32 from the CPU; the network
            itself stays as it is).
        folder: where the files go (created when missing).
        whitening: the teacher's whitening (m, P) to fold in, e.g. a store's; None: none.
        onnx: also write ``student.onnx``.
        tolerance: the largest max abs difference to PyTorch accepted.
        info: what the ONNX files record; None: `student_info` of ``net`` and ``whitening``.
        int8: how to make the int8 file; None: none.

    Returns:
        The files (``{"torchscript": path, "onnx": path, "int8": path}``) and the max abs
        differences of the first two to PyTorch.

    Raises:
        ExportError: when an export differs from PyTorch by more than ``tolerance``, the
            whitening is for another dimension, ``int8`` is given without ``onnx``, or the
            folder holds something other than an earlier export under an exported file's
            name (`check_export_folder`).

    Examples:
        >>> from aml.export import export_student
        >>> from aml.networks import load_named_or_file
        >>> student = load_named_or_file("mobilenet-v2-gem-contr-vgg16").net  # doctest: +SKIP
        >>> files, diffs = export_student(student, "deploy")  # doctest: +SKIP
        >>> sorted(files)  # doctest: +SKIP
        ['onnx', 'torchscript']
    """
    check_network(net)
    if int8 is not None and not onnx:
        raise ExportError("the int8 student is quantized from the ONNX one: drop --no-onnx")
    folder = Path(folder)
    check_export_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    exported = copy.deepcopy(net).cpu().float()  # the caller's network keeps its device, dtype and mode
    model = DeployedStudent(exported, whitening).eval()
    with staged(folder / "export") as staging:  # inside ``folder``: the moves below are renames
        files, diffs = _export_checked(model, staging, onnx, tolerance)
        if onnx:  # its metadata says what it is, with or without onnxruntime to check it
            info = info if info is not None else student_info(exported, whitening=whitening)
            write_onnx_metadata(files["onnx"], info)
        if int8 is not None and "onnx" not in diffs:
            raise ExportError("--int8 needs onnx and onnxruntime: pip install onnx onnxruntime")
        if int8 is not None:
            assert info is not None  # written with the ONNX file, which --int8 needs
            files["int8"] = _export_int8(files["onnx"], staging, info, int8)
        files = _moved_in(files, folder)
    return files, diffs


def _moved_in(staged_files: Dict[str, Path], folder: Path) -> Dict[str, Path]:
    """The staged files moved into ``folder`` together (Ctrl-C between two renames would leave
    two exports' files mixed), an earlier report of the ONNX files replaced dropped, and the
    files an earlier export left there named."""
    with uninterrupted():
        files = {kind: path.replace(folder / path.name) for kind, path in staged_files.items()}
        if {"onnx", "int8"} & set(files):
            _drop_earlier_report(folder)
    for earlier in sorted(set(EXPORTED_FILES.values()) - {path.name for path in files.values()}):
        if (folder / earlier).exists():
            log.warning(">> %s is left from an earlier export (this one did not write it)", folder / earlier)
    return files


def _drop_earlier_report(folder: Path) -> None:
    """Remove an earlier export's ``int8.json`` from ``folder`` whose ONNX files were just
    replaced: it measured those (a report of this export, if asked for, is written next)."""
    report = folder / INT8_REPORT
    if is_int8_report(report):
        report.unlink()
        log.warning(">> %s removed: it measured the ONNX files this export replaced", report)


def _earlier_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript student that aml exported: its archive holds the
    traced code of `DeployedStudent` (a checkpoint that ``torch.save`` wrote is a zip too)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(TORCHSCRIPT_MARK in name and name.endswith(".py") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _earlier_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX student that aml exported: it carries aml's metadata."""
    if not onnx_installed():  # nothing can read the metadata (and no ONNX file is written): as ONNX begins
        with open(path, "rb") as handle:
            return begins_as(handle.read(4), "an ONNX model")
    try:
        return read_onnx_metadata(path) is not None
    except OnnxStudentError:  # not ONNX, or damaged
        return False


#: per exported kind, how an earlier export of aml's is told from another file of that name
EARLIER_EXPORT = {"torchscript": _earlier_torchscript, "onnx": _earlier_onnx, "int8": _earlier_onnx}


def check_export_folder(folder: PathLike) -> None:
    """Refuse a folder where an export would replace what is not an earlier export of aml's: a
    folder, or a file that aml did not export, under one of `EXPORTED_FILES`' names (a
    checkpoint or a model of one's own called ``student.pt``, say; an empty file is replaced).

    Raises:
        ExportError: naming the path.

    Examples:
        >>> import tempfile, pathlib
        >>> from aml.export.student import check_export_folder
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     (pathlib.Path(folder) / "student.pt").write_text("my notes")
        ...     check_export_folder(folder)
        Traceback (most recent call last):
        ...
        aml.export.errors.ExportError: .../student.pt exists and is not a TorchScript student that aml exported: ...
    """
    for kind, name in EXPORTED_FILES.items():
        path = Path(folder) / name
        if path.exists() and not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            raise ExportError(f"{path} is {what}, not an exported student: it is not replaced; export elsewhere")
        if not path.is_file():
            continue
        try:
            with open(path, "rb") as handle:
                empty = not handle.read(1)
        except OSError as err:
            raise ExportError(f"{path} cannot be read ({err.strerror}): export to another folder") from None
        if not empty and not EARLIER_EXPORT[kind](path):
            what = "a TorchScript" if kind == "torchscript" else "an ONNX"
            raise ExportError(
                f"{path} exists and is not {what} student that aml exported: it is not replaced; export to "
                "another folder, or move the file away"
            )


def _export_checked(
    model: DeployedStudent, folder: Path, onnx: bool, tolerance: float
) -> Tuple[Dict[str, Path], Dict[str, float]]:
    """``student.pt`` (and ``student.onnx``) in ``folder``, each within ``tolerance`` of PyTorch."""
    # not square: no trunk's shortcut for its native size (timm's ViTs skip resampling their
    # position embeddings on their square native grid) is traced into the graph
    example = generated_images(((224, 192),))[0]
    files = {"torchscript": export_torchscript(model, folder / EXPORTED_FILES["torchscript"], example)}
    if onnx:
        files["onnx"] = export_onnx(model, folder / EXPORTED_FILES["onnx"], example)
    diffs = check_exports(model, files)
    bad = {name: diff for name, diff in diffs.items() if not diff <= tolerance}
    if bad:
        raise ExportError(
            f"exported model differs from PyTorch by {bad} (max abs, tolerance {tolerance}); "
            "its pooling may not support a dynamic image size"
        )
    return files, diffs


def _export_int8(onnx_file: Path, folder: Path, info: OnnxStudentInfo, int8: Int8Settings) -> Path:
    """``student-int8.onnx`` quantized from ``onnx_file``, its metadata ``info`` with its precision
    and calibration."""
    path = quantize_student(onnx_file, folder / EXPORTED_FILES["int8"], int8)
    calibrated = dataclasses.replace(
        info,
        precision="int8",
        calibration_image_size=int8.image_size,
        calibration_images=len(int8.calibration),
        calibrated_side=int8.calibrated_size(),
    )
    write_onnx_metadata(path, calibrated)
    return path
