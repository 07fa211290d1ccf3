"""Reduced precision: what autocast computes in float16 on CUDA stays far inside float16's
range, and everything after the trunk runs in float32.

CUDA's autocast runs convolutions and linear layers in float16; the CPU's does not reproduce
every overflow a GPU meets (a float16 MobileNetV2 -> 2048 extraction gave NaN for 12 of 300
images on an H200 and none on the CPU), so these tests hold the proxy: the head is float32
whatever the autocast, and every intermediate of the trunk (each op's output), measured in
float32, stays orders of magnitude below 65,504."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from aml.data.images import image_transform, load_and_resize
from aml.data.photos import sample_photos
from aml.networks import build_network
from aml.networks.backbones import BACKBONES
from aml.networks.pretrained import TEACHERS
from aml.networks.inference import inference_copy
from aml.training.batchnorm import calibrate_batchnorm

FLOAT16_MAX = 65504.0
MARGIN = 64  # the trunk's peak must stay below float16's largest value / MARGIN


def _input_dtypes(net, x, dtype):
    """The dtype each head module receives, and the descriptors', under ``dtype`` autocast."""
    seen = {}
    modules = {"pool": net.pool, "norm": net.norm}
    if net.projection() is not None:
        modules["projection"] = net.projection()
    if net.whiten is not None:
        modules["whiten"] = net.whiten
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].dtype))
             for name, m in modules.items()]
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            out = net.descriptors(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, out.dtype


# every student and teacher trunk, and timm's (a ViT's token readout, a ConvNeXt), each projected
# to 2048-d where its own dimension differs; and a trunk with whitening
HEADS = [dict(architecture=name, teacher_dim=2048) for name in
         sorted({name for name, backbone in BACKBONES.items() if backbone.student} | set(TEACHERS))
         + ["timm:test_vit", "timm:test_convnext"]] + [dict(architecture="resnet18", whitening=True)]


@pytest.mark.parametrize("spec", HEADS, ids=lambda spec: "-".join(str(v) for v in spec.values()))
def test_the_head_runs_in_float32_under_autocast(spec):
    torch.manual_seed(0)
    net = build_network(pretrained=False, **spec).eval()
    x = torch.rand(2, 3, 64, 48)
    for dtype in (torch.float16, torch.bfloat16):
        for copy in (net, inference_copy(net)):  # as trained, and as extracted (BatchNorm folded)
            seen, out = _input_dtypes(copy, x, dtype)
            assert out == torch.float32
            assert seen and all(d == torch.float32 for d in seen.values()), (dtype, seen)


def _synthetic_jpegs(folder: Path, count: int, side: int):
    """The GPU benchmark's images (benchmarks/baseline.py): smooth random content, landscape and portrait."""
    spec = importlib.util.spec_from_file_location("baseline", Path(__file__).resolve().parents[2] / "benchmarks" /
                                                  "baseline.py")
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    return baseline.make_images(folder, count, side)


class _Peak(torch.overrides.TorchFunctionMode):
    """The largest magnitude of any floating-point tensor a torch function returns while active:
    every layer's output and what lies between layers (a residual block's functional add, a
    convolution's output before its BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.peak = 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            self.peak = max(self.peak, float(out.detach().abs().max()))
        return out


def _trunk_peak(net, images) -> float:
    """The largest magnitude of any intermediate of the trunk, in float32, as trained (BatchNorm
    unfolded: the extraction of a small call, ``--compile``, ``fold_batchnorm=False``) and as
    a large extraction runs it (BatchNorm folded)."""
    peaks = []
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
    folds = any(isinstance(m, norms) for m in net.modules())
    for copy in (net, inference_copy(net)) if folds else (net,):
        trunk = copy.eval().features[:copy.trunk_end()]
        with torch.inference_mode(), _Peak() as peak:
            for x in images:
                trunk(x[None])
        peaks.append(peak.peak)
    return max(peaks)


def test_the_peak_sees_what_lies_between_layers():
    class Scaled(torch.nn.Module):  # a large value that no module outputs, as a residual add
        def forward(self, x):
            return (x * 1e5 + x) / 1e5

    with torch.inference_mode(), _Peak() as peak:
        torch.nn.Sequential(torch.nn.Identity(), Scaled())(torch.full((1, 2), 2.0))
    assert peak.peak == 200002.0  # x * 1e5 + x, for x = 2


def _calibrated(arch, teacher_dim, images):
    """A random network with BatchNorm statistics from the images, as benchmarks/gpu.py builds it."""
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, teacher_dim=teacher_dim)
    shape = images[0].shape
    calibrate_batchnorm(net, [torch.stack([x for x in images if x.shape == shape])])
    return net.eval()


# the trunks of benchmarks/gpu.py's rows (a MobileNetV2 student's trunk is the same for 512 and
# 2048 dimensions), the MobileNetV2 at the size where the H200's float16 run gave NaN
@pytest.mark.parametrize("arch, teacher_dim, side", [("mobilenet_v2", 2048, 1024), ("vgg16", None, 256),
                                                     ("resnet101", None, 256)])
def test_calibrated_trunks_stay_far_inside_float16(tmp_path, arch, teacher_dim, side):
    paths = _synthetic_jpegs(tmp_path, 4, side)
    mean_std = build_network(arch, pretrained=False).meta
    transform = image_transform(mean_std["mean"], mean_std["std"])
    images = [transform(load_and_resize(p, side)) for p in paths]
    net = _calibrated(arch, teacher_dim, images)
    peak = _trunk_peak(net, images[:2])
    assert 0 < peak < FLOAT16_MAX / MARGIN, peak


# the student the original starts from (torchvision's V1 file) and the getting-started teacher's
# trunk (TensorFlow's EfficientNet-Lite0 weights), which test.py extracts under float16 on CUDA
@pytest.mark.parametrize("arch, teacher_dim", [("mobilenet_v2", 2048), ("efficientnet_lite0", None)])
def test_real_imagenet_trunks_on_real_photos_stay_far_inside_float16(arch, teacher_dim):
    net = build_network(arch, pretrained=True, teacher_dim=teacher_dim).eval()
    transform = image_transform(net.meta["mean"], net.meta["std"])
    try:
        found = sample_photos()
    except FileNotFoundError as err:  # a GPU machine without the scikit-image wheel
        pytest.skip(str(err))
    photos = [transform(load_and_resize(p, 256)) for p in list(found.values())[::3]]
    peak = _trunk_peak(net, photos)
    assert 1 < peak < FLOAT16_MAX / MARGIN, peak
    assert math.isfinite(peak)
