"""The student for deployment: one self-contained graph from an RGB image to the descriptor
the teacher's database is searched with.

:class:`DeployedStudent` takes B x 3 x H x W images with values in [0, 1] (any H, W),
normalises them with the network's mean/std, runs the trunk, GeM pooling and L2
normalisation exactly as :meth:`ImageRetrievalNet.descriptors`, and optionally applies the
teacher's learned whitening (P (x - m), then L2) so that queries land in the whitened space
of a store. It is written as TorchScript (traced) and ONNX (height and width dynamic), and
:func:`check_exports` compares both with PyTorch on generated images of several sizes.
"""

import logging
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from aml.networks.retrieval_net import ImageRetrievalNet

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
CHECK_SIZES: Tuple[Tuple[int, int], ...] = ((224, 224), (180, 300), (320, 240))


class ExportError(RuntimeError):
    """The network cannot be exported, or an export does not match PyTorch."""


class DeployedStudent(nn.Module):
    """RGB in [0, 1] (B x 3 x H x W) -> B x D descriptors, whitening folded in when given."""

    def __init__(self, net: ImageRetrievalNet, whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(net.meta["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(net.meta["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.whitened = whitening is not None
        if whitening is not None:
            m, P = whitening
            dim = net.meta["outputdim"]
            if np.asarray(P).shape != (dim, dim) or np.asarray(m).size != dim:
                raise ExportError(f"the whitening is for {np.asarray(P).shape[-1]}-d descriptors but the student "
                                  f"outputs {dim}-d ones; use the whitening of its teacher's store")
            self.register_buffer("m", torch.as_tensor(np.asarray(m, dtype=np.float32).reshape(1, -1)))
            self.register_buffer("P", torch.as_tensor(np.asarray(P, dtype=np.float32)))
        self.eval()  # the wrapper too: exporters restore its mode, and train() would reach the network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.net.descriptors((image - self.mean) / self.std)
        if self.whitened:
            x = (x - self.m) @ self.P.t()
            x = x / (torch.linalg.vector_norm(x, ord=2, dim=1, keepdim=True) + 1e-6)
        return x


def generated_images(sizes: Sequence[Tuple[int, int]] = CHECK_SIZES, seed: int = 0) -> List[torch.Tensor]:
    """One smooth random 1 x 3 x H x W image in [0, 1] per size (low frequencies plus noise,
    so that activations look like a photograph's rather than white noise)."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for height, width in sizes:
        coarse = torch.rand(1, 3, max(2, height // 16), max(2, width // 16), generator=generator)
        smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        images.append((0.8 * smooth + 0.2 * torch.rand(1, 3, height, width, generator=generator)).clamp(0, 1))
    return images


def export_torchscript(model: DeployedStudent, path: PathLike, example: torch.Tensor) -> Path:
    """Trace ``model`` on ``example`` and save it (loadable with ``torch.jit.load``)."""
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python conditions on shapes (GeM's p): the check below proves the size stays free
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # TorchScript is frozen upstream
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))
    return Path(path)


def export_onnx(model: DeployedStudent, path: PathLike, example: torch.Tensor, opset: int = 17) -> Path:
    """Export ``model`` to ONNX with batch, height and width dynamic (input ``image``,
    output ``descriptor``)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["descriptor"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "descriptor": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return Path(path)


def check_exports(model: DeployedStudent, files: Dict[str, Path],
                  images: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, float]:
    """Max absolute difference between PyTorch's descriptors and each exported file's
    (``torchscript``; ``onnx`` through onnxruntime, skipped with a notice when it is not
    installed) over ``images`` (default: :func:`generated_images`)."""
    images = list(images) if images is not None else generated_images()
    with torch.no_grad():
        reference = [model(image).numpy() for image in images]
    diffs: Dict[str, float] = {}
    if "torchscript" in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(files["torchscript"]))
        with torch.no_grad():
            diffs["torchscript"] = max(float(np.abs(loaded(i).numpy() - r).max()) for i, r in zip(images, reference))
    if "onnx" in files:
        try:
            import onnxruntime
        except ImportError:
            log.warning(">> onnxruntime is not installed: the ONNX file is not checked (pip install onnxruntime)")
            return diffs
        session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
        diffs["onnx"] = max(float(np.abs(session.run(None, {"image": i.numpy()})[0] - r).max())
                            for i, r in zip(images, reference))
    return diffs


def export_student(net: ImageRetrievalNet, folder: PathLike, whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                   onnx: bool = True, tolerance: float = 1e-4) -> Tuple[Dict[str, Path], Dict[str, float]]:
    """Write ``student.pt`` (TorchScript) and ``student.onnx`` to ``folder``, check them on
    generated images of several sizes, and return (files, max abs differences). An export
    that differs from PyTorch by more than ``tolerance`` raises :class:`ExportError`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = DeployedStudent(net.cpu().float(), whitening).eval()
    example = generated_images(((224, 224),))[0]
    files = {"torchscript": export_torchscript(model, folder / "student.pt", example)}
    if onnx:
        files["onnx"] = export_onnx(model, folder / "student.onnx", example)
    diffs = check_exports(model, files)
    bad = {name: diff for name, diff in diffs.items() if not diff <= tolerance}
    if bad:
        raise ExportError(f"exported model differs from PyTorch by {bad} (max abs, tolerance {tolerance}); "
                          "its pooling may not support a dynamic image size")
    return files, diffs
