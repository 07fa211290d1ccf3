"""Reduced precision: what autocast computes in float16 on CUDA stays far inside float16's
range, and everything after the trunk runs in float32.

CUDA's autocast runs convolutions and linear layers in float16; the CPU's does not reproduce
every overflow a GPU meets (a float16 MobileNetV2 -> 2048 extraction gave NaN for 12 of 300
images on an H200 and none on the CPU), so these tests hold the proxy: the head is float32
whatever the autocast, and the trunk's activations, measured in float32, stay orders of
magnitude below 65,504."""

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


def _trunk_peak(net, images) -> float:
    """The largest magnitude any layer of the (BatchNorm-folded) trunk outputs, in float32."""
    copy = inference_copy(net).eval()
    trunk = copy.features[:copy.trunk_end()]
    peak = [0.0]

    def record(module, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            peak[0] = max(peak[0], float(out.detach().abs().max()))

    hooks = [m.register_forward_hook(record) for m in trunk.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            for x in images:
                copy.descriptors(x[None])
    finally:
        for hook in hooks:
            hook.remove()
    return peak[0]


def _calibrated(arch, teacher_dim, images):
    """A random network with BatchNorm statistics from the images, as benchmarks/gpu.py builds it."""
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, teacher_dim=teacher_dim)
    shape = images[0].shape
    calibrate_batchnorm(net, [torch.stack([x for x in images if x.shape == shape])])
    return net.eval()


@pytest.mark.parametrize("arch, teacher_dim", [("mobilenet_v2", 2048), ("resnet101", None)])
def test_calibrated_trunks_stay_far_inside_float16(tmp_path, arch, teacher_dim):
    paths = _synthetic_jpegs(tmp_path, 6, 256)
    mean_std = build_network(arch, pretrained=False).meta
    transform = image_transform(mean_std["mean"], mean_std["std"])
    images = [transform(load_and_resize(p, 256)) for p in paths]
    net = _calibrated(arch, teacher_dim, images)
    peak = _trunk_peak(net, images[:3])
    assert 0 < peak < FLOAT16_MAX / MARGIN, peak


def test_real_imagenet_trunk_on_real_photos_stays_far_inside_float16():
    net = build_network("mobilenet_v2", pretrained=True, teacher_dim=2048).eval()  # torchvision's V1 file
    transform = image_transform(net.meta["mean"], net.meta["std"])
    try:
        found = sample_photos()
    except FileNotFoundError as err:  # a GPU machine without the scikit-image wheel
        pytest.skip(str(err))
    photos = [transform(load_and_resize(p, 256)) for p in list(found.values())[::3]]
    peak = _trunk_peak(net, photos)
    assert 1 < peak < FLOAT16_MAX / MARGIN, peak
    assert math.isfinite(peak)
