"""A network lent to a library call comes back as it was: every module's train/eval mode (a
training network's frozen BatchNorm included), its parameters and buffers where they were (the
same tensors, device, dtype and memory layout) and their values (the BatchNorm calibration
changes the running statistics alone, its purpose)."""

from typing import Callable, Dict

import numpy as np
import pytest
import torch
from PIL import Image

from aml.data.images import image_transform
from aml.descriptors import ExtractionConfig, describe_images, extract_vectors
from aml.export import export_student, student_info
from aml.networks import build_network, multiscale_power
from aml.networks.fingerprint import network_fingerprint
from aml.networks.inference import inference_copy
from aml.training.batchnorm import calibrate_batchnorm, calibrate_if_vanishing, freeze_batchnorm


def _extract(net, images, config: ExtractionConfig):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    return extract_vectors(net, images, 40, transform, ms=(1, 0.5), config=config)


def _calibrate(net, images):
    tensors = {path: image_transform(net.meta["mean"], net.meta["std"])(Image.open(path).convert("RGB"))
               for path in images}
    calibrate_if_vanishing(net, images, tensors.__getitem__, torch.Generator().manual_seed(0), torch.device("cpu"))
    calibrate_batchnorm(net, [torch.stack([tensors[path] for path in images[:2]])])  # one shape


#: the library's calls that take a network, each with the arguments a user would give
CALLS: Dict[str, Callable] = {
    "extract_vectors": lambda net, images, tmp: _extract(net, images, ExtractionConfig(workers=0)),
    "extract_vectors folded, contiguous": lambda net, images, tmp: _extract(
        net, images, ExtractionConfig(workers=0, fold_batchnorm=True, channels_last=False)),
    "extract_vectors bfloat16, fixed batches": lambda net, images, tmp: _extract(
        net, images, ExtractionConfig(workers=1, amp=True, amp_dtype="bfloat16", fixed_batches=True)),
    "describe_images": lambda net, images, tmp: describe_images(net, images, 40, scales=(1, 0.5)),
    "inference_copy": lambda net, images, tmp: inference_copy(net),
    "network_fingerprint": lambda net, images, tmp: network_fingerprint(net),
    "multiscale_power": lambda net, images, tmp: multiscale_power(net, [1, 0.5]),
    "student_info": lambda net, images, tmp: student_info(net),
    "export_student": lambda net, images, tmp: export_student(net, tmp, onnx=False),
    "BatchNorm calibration": lambda net, images, tmp: _calibrate(net, images),
}


def _state(net: torch.nn.Module):
    modes = {name: module.training for name, module in net.named_modules()}
    tensors = {name: (t, t.data_ptr(), t.dtype, t.device, t.stride())
               for name, t in list(net.named_parameters()) + list(net.named_buffers())}
    return modes, tensors


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lent")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(48, 36), (48, 36), (36, 48)]):
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_lent_network_comes_back_as_it_was(call, images, tmp_path):
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=False, teacher_dim=64).train()
    freeze_batchnorm(net)  # a network in training, as a trainer lends it
    modes, tensors = _state(net)
    values = {name: value.clone() for name, value in net.state_dict().items()}
    CALLS[call](net, images, tmp_path)
    after_modes, after_tensors = _state(net)
    assert after_modes == modes
    for name, (tensor, *where) in tensors.items():
        kept, *now = after_tensors[name]
        assert kept is tensor and now == where, name
    changed = [name for name, value in net.state_dict().items() if not torch.equal(value, values[name])]
    assert changed == [] or (call == "BatchNorm calibration" and all("running_" in name or "batches" in name
                                                                       for name in changed))
