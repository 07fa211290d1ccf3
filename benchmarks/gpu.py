#!/usr/bin/env python
"""Benchmark of aml's GPU path against the original's one-image-at-a-time loop, in one run.

    AML_WEIGHTS_PATH=gpu-assets/networks python benchmarks/gpu.py --photos gpu-assets/photos --profile
    python benchmarks/gpu.py --device cpu --images 6 --image-size 64 --tuples 6 --workers 0   # small, on the CPU

It writes its own JPEGs (1024x768 and 768x1024, smooth random content) and synthetic
training data, and needs no download; the real ImageNet trunks of the training rows and of
the real-weights row are found like every weight file (``$AML_WEIGHTS_PATH``, ``docs/networks.md``),
the real photos in ``--photos`` (scikit-image's, ``make gpu-assets`` gathers both). Networks
of the extraction rows have random weights with BatchNorm statistics calibrated on the
images (a random trunk's activations otherwise vanish and every descriptor looks alike).

Sections, in this order, each saved to the JSON as soon as it is done; a section or row that
fails records its error and the run goes on; a section that would start after ``--budget``
seconds is recorded as skipped:

- ``cold_start``: seconds of the first forward at an input shape never met (cuDNN prepares
  its kernels per shape) against a second one, per network, memory format and precision,
  for inference and for a training step;
- ``real_weights`` (with ``--photos``): torchvision's ImageNet MobileNetV2 with a 2048-d
  projection on real photos, every variant's smallest cosine to the original's;
- ``syncs`` (CUDA): host synchronisations counted by ``torch.cuda.set_sync_debug_mode`` in a
  warm extraction (per batch) and in a training batch;
- ``extraction`` (per network: mobilenet_v2 to 512 and 2048, vgg16, resnet101, mobilenet_v2 at
  3 scales): the original's loop (PIL in loader workers, one image per forward, fp32); aml's
  default and, with ``--variants``, its other decodings and precisions, its network
  unfolded (``fold_batchnorm=False``) and contiguous (``channels_last=False``), each timed twice
  (``cold_rate``: the first call, which meets the shapes; ``rate``: the second); the
  network alone on ready batches; aml's decoding alone; the device's decoding alone (at the
  image size, resized to 3/4 of it, and so from sources of many sizes); the smallest cosine
  to the original's descriptors;
- ``training`` (``--training``, default on CUDA): the getting-started teacher
  (EfficientNet-Lite0, ``std``) and student (MobileNetV2, ``reg``) from their ImageNet
  weights on synthetic data of varied aspect ratios (many image shapes, as photos have),
  two epochs each through ``main.py``: the seconds of each epoch;
- ``ts_epoch``: one ``ts`` epoch of ``--tuples`` tuples one tuple at a time in fp32 with PIL
  mining (the original's way) against ``--batch-forward --amp`` with aml's defaults;
- ``profile`` (``--profile``): torch.profiler's top operations of a first extraction and of
  a training batch, also written next to the JSON as ``<json>.profile.txt``;
- ``compile`` (``--compile``, default on CUDA): torch.compile's cost and gain.
cuDNN's autotuner (``torch.backends.cudnn.benchmark``) stays off, as in aml.
"""

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from aml.data.images import image_size, image_transform, load_and_resize, resized_shape
from aml.descriptors import ExtractionConfig, extract_vectors
from aml.descriptors.extraction import _BatchCap, _batches, _image_loader, resolve_amp, resolve_decoding
from aml.losses import build_loss
from aml.networks import build_network
from aml.networks.inference import inference_copy
from aml.networks.retrieval_net import multiscale_power
from aml.training.modes import get_mode
from aml.training.batchnorm import calibrate_batchnorm, freeze_batchnorm
from aml.training.optim import build_optimizer
from aml.training.trainer import Learner, Split, Trainer, TrainSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_targets  # noqa: E402  (benchmarks/ is not a package)
from baseline import make_images, original_loop  # noqa: E402
from record import add_json_argument, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MULTISCALE = (1.0, 1 / math.sqrt(2), 0.5)
NETWORKS: Dict[str, Dict] = {  # row name -> build_network arguments and scales
    "mobilenet_v2 -> 512": dict(arch="mobilenet_v2", teacher_dim=512),
    "mobilenet_v2 -> 2048": dict(arch="mobilenet_v2", teacher_dim=2048),
    "vgg16": dict(arch="vgg16"),
    "resnet101": dict(arch="resnet101"),
    "mobilenet_v2 -> 512 (3 scales)": dict(arch="mobilenet_v2", teacher_dim=512, scales=MULTISCALE),
}
# aml's variants timed per network: decoding and autocast (the first is aml's default)
VARIANTS: Dict[str, Dict] = {
    "aml": {},
    "--decode device": dict(decode="device"),
    "--decode device --no-amp": dict(decode="device", amp=False),
    "--decode pil": dict(decode="pil"),
    "--amp-dtype bfloat16": dict(amp_dtype="bfloat16"),
    # whether folding BatchNorm pays on the device (on the CPU it saves ~30% of MobileNetV2's forward)
    "fold_batchnorm=False": dict(fold_batchnorm=False),
    # whether channels_last pays for depthwise convolutions (cuDNN prepares them per shape there)
    "channels_last=False": dict(channels_last=False),
}
# the variants timed on every row; the others (with --variants) on the first row only
EVERY_ROW = ("aml", "--decode device")
# how the cold-start probe runs a network: memory format, autocast dtype (None: fp32), cuDNN on
PROBES: Dict[str, Dict] = {
    "channels_last fp16": dict(channels_last=True, dtype=torch.float16, cudnn=True),
    "contiguous fp16": dict(channels_last=False, dtype=torch.float16, cudnn=True),
    "channels_last fp32": dict(channels_last=True, dtype=None, cudnn=True),
    "contiguous fp32": dict(channels_last=False, dtype=None, cudnn=True),
    "channels_last fp16, cuDNN off": dict(channels_last=True, dtype=torch.float16, cudnn=False),
}
TRAINING_PROBES: Dict[str, Dict] = {
    "channels_last bf16": dict(channels_last=True, dtype=torch.bfloat16, cudnn=True),
    "channels_last fp32": dict(channels_last=True, dtype=None, cudnn=True),
    "contiguous fp32": dict(channels_last=False, dtype=None, cudnn=True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], object]) -> tuple:
    sync(device)
    start = time.perf_counter()
    out = run()
    sync(device)
    return out, time.perf_counter() - start


def error_of(err: BaseException) -> Dict[str, str]:
    """What a failed row records."""
    return {"error": f"{type(err).__name__}: {err}"[:500]}


def build(spec: Dict, paths: Sequence[str], image_size: int, device: torch.device) -> torch.nn.Module:
    """A random network with BatchNorm statistics calibrated on a few of the images."""
    torch.manual_seed(0)
    net = build_network(spec["arch"], pretrained=False, teacher_dim=spec.get("teacher_dim"))
    transform = image_transform(net.meta["mean"], net.meta["std"])
    images = [transform(load_and_resize(p, image_size)) for p in paths[:8]]
    shape = images[0].shape
    calibrate_batchnorm(net, [torch.stack([x for x in images if x.shape == shape])])
    return net.to(device).eval()


def cosines(a: torch.Tensor, b: torch.Tensor) -> List[float]:
    return (F.normalize(a, dim=0) * F.normalize(b, dim=0)).sum(0).tolist()


# -- cold start -----------------------------------------------------------------------------

@contextlib.contextmanager
def cudnn_enabled(enabled: bool):
    with torch.backends.cudnn.flags(enabled=enabled, benchmark=False):
        yield


def _probe(net: torch.nn.Module, device: torch.device, probe: Dict, shapes: Sequence[tuple], train: bool) -> Dict:
    """Seconds of the first and of a second forward (and backward when ``train``) per shape."""
    memory_format = torch.channels_last if probe["channels_last"] else torch.contiguous_format
    net = net.to(device, memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=probe["dtype"], enabled=probe["dtype"] is not None)
    first, second = [], []
    for shape in shapes:
        x = torch.randn(shape, device=device).contiguous(memory_format=memory_format)

        def step():
            with autocast:
                out = net.descriptors(x)
            if train:
                out.sum().backward()
        for times in (first, second):
            with cudnn_enabled(probe["cudnn"]), (contextlib.nullcontext() if train else torch.inference_mode()):
                times.append(timed(device, step)[1])
    return {"first_s": statistics.mean(first), "steady_s": statistics.mean(second), "shapes": len(shapes)}


def warm_up_device(device: torch.device) -> None:
    """What a process pays once on the device, before the first probe: cuDNN's handle and its
    lazily loaded kernels, a forward and a backward in each precision (on shapes no probe
    meets), so that the first probe's "first call" is not charged for them."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).to(device)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 19, 23, device=device).contiguous(memory_format=torch.channels_last)
    for dtype in (None, torch.float16, torch.bfloat16):
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            net(x).float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cold_start_rows(args, device: torch.device) -> Dict:
    """First-call and steady seconds per network and probe, on shapes no other probe met."""
    side = args.image_size
    rows: Dict = {"inference": {}, "training": {}}
    warm_up_device(device)
    offset = 0
    for arch in ("mobilenet_v2", "resnet101"):
        torch.manual_seed(0)
        net = inference_copy(build_network(arch, pretrained=False)).eval()
        rows["inference"][arch] = {}
        for name, probe in PROBES.items():
            shapes = [(8, 3, side + 8 * (offset + k + 1), side * 3 // 4) for k in range(2)]
            offset += 2
            try:
                rows["inference"][arch][name] = _probe(net, device, probe, shapes, train=False)
            except Exception as err:  # noqa: BLE001 - a probe that fails is a finding, recorded
                rows["inference"][arch][name] = error_of(err)
    small = max(32, side // 4)  # training images are smaller (362 px in the paper)
    for arch in ("efficientnet_lite0", "mobilenet_v2"):
        torch.manual_seed(0)
        net = build_network(arch, pretrained=False, teacher_dim=512).train()
        rows["training"][arch] = {}
        for name, probe in TRAINING_PROBES.items():
            shapes = [(4 + offset + k, 3, small, small * 3 // 4) for k in range(2)]
            offset += 2
            try:
                rows["training"][arch][name] = _probe(net, device, probe, shapes, train=True)
            except Exception as err:  # noqa: BLE001
                rows["training"][arch][name] = error_of(err)
    return rows


# -- extraction -----------------------------------------------------------------------------

def network_alone(net, shape, count, scales, msp, device, batch, dtype) -> float:
    """Seconds for ``count`` images of ``shape`` in ready batches (aml's batch and precision)."""
    x = torch.randn((batch,) + tuple(shape), device=device).contiguous(memory_format=torch.channels_last)
    net = inference_copy(net).to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    cap = _BatchCap()
    with torch.inference_mode(), autocast:
        cap.describe(net.descriptors, x, scales, msp)  # warm-up
        _, seconds = timed(device, lambda: [cap.describe(net.descriptors, x, scales, msp)
                                           for _ in range(max(1, count // batch))])
    return seconds / (max(1, count // batch) * batch)


def decode_alone(net, paths, image_size, device, workers, decode) -> float:
    """Seconds per image of aml's loader and decoding, without the network."""
    decoding = resolve_decoding(decode, device)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    dataset = decoding.dataset(paths, image_size, None, transform)
    decoder = decoding.decoder(device, net.meta["mean"], net.meta["std"])

    def run():
        loader = _image_loader(dataset, workers, device, decoding)
        for items, _ in _batches(loader, lambda shape: 32, decoding.shape, 128):
            decoder(items, None)
    _, seconds = timed(device, run)
    return seconds / len(paths)


def mixed_sizes(paths: Sequence[str]) -> List[str]:
    """The benchmark's JPEGs saved again at 80 to 100% of their size, each its own source shape
    (made once per set of images, in a folder beside them).

    Args:
        paths: the benchmark's JPEGs.

    Returns:
        The paths of the copies, in the same order.
    """
    folder = Path(paths[0]).parent / f"mixed-sizes-{len(paths)}"
    folder.mkdir(exist_ok=True)
    out = []
    for k, path in enumerate(paths):
        out.append(str(folder / Path(path).name))
        if not Path(out[-1]).exists():
            scale = 0.8 + 0.2 * k / len(paths)
            with Image.open(path) as image:
                image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.BICUBIC).save(out[-1], quality=90)
    return out


def _variant(net, paths, args, device, scales, msp, reference, extra: Dict) -> Dict:
    """One variant of aml's extraction, timed cold (first call) then warm."""
    transform = image_transform(net.meta["mean"], net.meta["std"])
    options = dict(dict(device=device, workers=args.workers, decode=args.decode, amp_dtype=args.amp_dtype), **extra)
    config = ExtractionConfig(**options)

    def run(images: Sequence[str] = paths):
        return extract_vectors(net, images, args.image_size, transform, ms=scales, msp=msp, config=config)
    _, cold = timed(device, run)
    ours, warm = timed(device, run)
    # what a call costs whatever its size: the loader's workers started, the network prepared
    run(paths[:1])  # a batch of one met once (cuDNN prepares its kernels per batch size)
    _, one = timed(device, lambda: run(paths[:1]))
    cos = cosines(reference, ours)
    return {"rate": len(paths) / warm, "cold_rate": len(paths) / cold, "one_image_s": one, "cos_min": min(cos),
            "cos_median": statistics.median(cos)}


def extraction_row(args, name: str, paths: Sequence[str], device: torch.device, variants: Sequence[str]) -> Dict:
    spec = NETWORKS[name]
    net = build(spec, paths, args.image_size, device)
    scales = spec.get("scales", (1,))
    msp = multiscale_power(net, list(scales))
    transform = image_transform(net.meta["mean"], net.meta["std"])
    original_loop(net, paths[:2], args.image_size, scales, msp, device, args.workers)  # warm-up
    reference, t_original = timed(device, lambda: original_loop(net, paths, args.image_size, scales, msp, device,
                                                                 args.workers))
    row: Dict = {"network": name, "original": len(paths) / t_original}
    for variant in variants:
        extra = VARIANTS[variant]
        try:
            row[variant] = _variant(net, paths, args, device, scales, msp, reference, extra)
            row[variant]["speedup"] = row[variant]["rate"] / row["original"]
        except Exception as err:  # noqa: BLE001 - e.g. NonFiniteDescriptors: recorded, the run goes on
            row[variant] = error_of(err)
    shape = transform(load_and_resize(paths[1], args.image_size)).shape
    batch = 32 if device.type == "cuda" else 4
    ceilings = {
        "network_alone": lambda: network_alone(net, shape, len(paths), scales, msp, device, batch,
                                               resolve_amp(None, device)),
        "decode_alone": lambda: decode_alone(net, paths, args.image_size, device, args.workers, args.decode),
        # the device decoder's rate (nvJPEG on CUDA): with network alone, the ceiling of the targets
        "device_decode_alone": lambda: (
            1 / row["decode_alone"] if resolve_decoding(args.decode, device).name == "device" and "decode_alone" in row
            else decode_alone(net, paths, args.image_size, device, args.workers, "device")),
        # the same with every image resized on the device (the benchmark's JPEGs are as large as
        # the image size; photos of a data set come larger, in many shapes): what resizing costs
        "device_decode_resized_alone": lambda: decode_alone(net, paths, args.image_size * 3 // 4, device,
                                                            args.workers, "device"),
        # and from sources of many sizes, as a data set's photos: a batch's images of one
        # resized shape come from several source shapes (LanczosResize.many)
        "device_decode_mixed_alone": lambda: decode_alone(net, mixed_sizes(paths), args.image_size * 3 // 4, device,
                                                          args.workers, "device"),
    }
    for key, seconds_per_image in ceilings.items():
        try:
            row[key] = 1 / seconds_per_image()
        except Exception as err:  # noqa: BLE001 - the variants timed above stay; the error is recorded
            row[f"{key}_error"] = error_of(err)["error"]
    return row


def _cell(entry) -> str:
    if not isinstance(entry, dict):
        return ""
    if "error" in entry:
        return f"error: {entry['error'][:60]}"
    return f"{entry['rate']:.1f} ({entry['speedup']:.1f}x, cold {entry['cold_rate']:.1f}, cos {entry['cos_min']:.5f})"


def real_weights_row(args, device: torch.device) -> Dict:
    """torchvision's ImageNet MobileNetV2 -> 2048 on real photos: every variant's smallest cosine."""
    photos = sorted(str(p) for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise FileNotFoundError(f"no .jpg or .png photo in {args.photos}")
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=True, teacher_dim=2048).to(device).eval()
    reference = original_loop(net, photos, args.image_size, (1,), 1.0, device, args.workers)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    row: Dict = {"photos": len(photos)}
    for variant, extra in VARIANTS.items():
        try:
            config = ExtractionConfig(**dict(dict(device=device, workers=args.workers), **extra))
            cos = cosines(reference, extract_vectors(net, photos, args.image_size, transform, config=config))
            row[variant] = {"cos_min": min(cos), "cos_median": statistics.median(cos)}
        except Exception as err:  # noqa: BLE001
            row[variant] = error_of(err)
    return row


# -- syncs ----------------------------------------------------------------------------------

def _count_syncs(run: Callable[[], object]) -> int:
    """Host synchronisations CUDA reports while ``run`` runs."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def extraction_syncs(count: Callable[[Sequence[str]], int], paths: Sequence[str], size: int) -> Dict:
    """Host synchronisations of an extraction call of 32 images and of one of 128: what each
    costs once (its constants' copies, the descriptors' copy back) and per batch (their
    difference over the difference of their batches).

    Args:
        count: the synchronisations of an extraction of some images (warm: their shapes met).
        paths: the images, at least 128 for the per-batch count (fewer: all of them, once).
        size: the image size, which decides their batches.
    """
    small, large = list(paths[:32]), list(paths[:128])
    syncs = {"small": count(small), "large": count(large)}
    batches = {"small": batch_count(small, size), "large": batch_count(large, size)}
    extra = batches["large"] - batches["small"]
    return {
        "extraction_images": {"small": len(small), "large": len(large)},
        "extraction_batches": batches,
        "extraction_syncs": syncs,
        "extraction_syncs_per_batch": (syncs["large"] - syncs["small"]) / extra if extra else None,
    }


def sync_rows(args, paths: Sequence[str], device: torch.device, folder: Path) -> Dict:
    net = build(NETWORKS["mobilenet_v2 -> 512"], paths, args.image_size, device)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    config = ExtractionConfig(device=device, workers=args.workers, decode=args.decode)

    def count(images: Sequence[str]) -> int:
        extract_vectors(net, images, args.image_size, transform, config=config)  # warm: shapes met
        return _count_syncs(lambda: extract_vectors(net, images, args.image_size, transform, config=config))

    extraction = extraction_syncs(count, paths, args.image_size)
    trainer = _ts_trainer(args, paths, device, folder / "syncs", fast=True)
    _training_mode(trainer)
    loader = trainer._loader(trainer.train_split, trainer.epoch_tuples(trainer.train_split, 0), 0, shuffle=True)
    batches = iter(loader)
    trainer.batch_losses(next(batches), trainer.train_split, backward=True)  # warm
    batch = next(batches)
    training = _count_syncs(lambda: trainer.batch_losses(batch, trainer.train_split, backward=True))
    return {**extraction, "training_batch_syncs": training}


def batch_count(images: Sequence[str], size: int, batch: int = 32) -> int:
    """The forwards of an extraction on CUDA: batches of ``batch`` per image shape after resizing."""
    shapes: Dict[tuple, int] = {}
    for path in images:
        shape = resized_shape(image_size(path), size)
        shapes[shape] = shapes.get(shape, 0) + 1
    return sum(math.ceil(count / batch) for count in shapes.values())


def _training_mode(trainer: Trainer) -> None:
    """The network as a training epoch runs it: train mode, BatchNorm frozen (the default)."""
    trainer.learner.net.train()
    freeze_batchnorm(trainer.learner.net)


# -- training -------------------------------------------------------------------------------

def training_db(count: int) -> Dict:
    """Clusters of 3 images (a landmark seen three times); every image is a query twice, paired
    with each of the other two images of its cluster (2 x ``count`` query/positive pairs)."""
    clusters = [i // 3 for i in range(count)]
    mates = [[j for j in range(3 * (i // 3), min(count, 3 * (i // 3) + 3)) if j != i] or [i] for i in range(count)]
    queries = [i for i in range(count) for _ in range(2)]
    positives = [mates[i][k % len(mates[i])] for i in range(count) for k in range(2)]
    return {"cids": [f"{i:04d}" for i in range(count)], "cluster": clusters, "qidxs": queries, "pidxs": positives}


def _ts_trainer(args, paths, device, folder: Path, fast: bool) -> Trainer:
    net = build(NETWORKS["mobilenet_v2 -> 512"], paths, args.image_size, device)
    db = training_db(len(paths))
    teacher = F.normalize(torch.randn(512, len(paths), generator=torch.Generator().manual_seed(0)), dim=0)
    # the original's way: one image per forward, float32, PIL, no padding of batches to fixed sizes
    extraction = ExtractionConfig() if fast else ExtractionConfig(amp=False, decode="pil", batch_size=1,
                                                                  fixed_batches=False)
    if fast and args.decode != "auto":
        extraction = extraction.but(decode=args.decode)
    settings = TrainSettings(image_size=args.image_size, neg_num=5, query_size=args.tuples, pool_size=len(paths),
                             batch_size=5, epochs=1, val=False, batch_forward=fast, autocast=fast, seed=0)
    optimizer = build_optimizer(net, "adam", 1e-6, 0.9, 1e-6)
    trainer = Trainer(Learner(net, build_loss("contrastive", 0.7, 0.1).to(device), optimizer, get_mode("ts")),
                      Split(db, list(paths), teacher), None, folder, settings,
                      extraction.but(workers=args.workers, device=str(device)))
    trainer.fixed_batches = fast and trainer.fixed_batches  # the original pads no tuple's forward
    return trainer


def ts_epoch(args, paths, device, fast: bool, folder: Path) -> float:
    """Seconds of one ts epoch of ``args.tuples`` tuples: the original's way or aml's fast path."""
    trainer = _ts_trainer(args, paths, device, folder / ("fast" if fast else "orig"), fast)
    _, seconds = timed(device, trainer.fit)
    return seconds


# The getting-started flow (docs/getting-started.md) at the benchmark's sizes: data, teacher, student.
# views of any aspect ratio (many image shapes, as photos have): what a first epoch costs on a
# GPU with many shapes
SYNTHETIC = ["--train-landmarks", "40", "--val-landmarks", "2", "--views", "10", "--test-landmarks", "2",
             "--distractors", "0", "--aspects", "varied", "--quiet"]
TEACHER_RUN = ["-a", "efficientnet_lite0", "-m", "std", "-qs", "160", "-ps", "400", "-nn", "3", "-b", "8",
               "--lr", "5e-4", "--batch-forward"]
STUDENT_RUN = ["-a", "mobilenet_v2", "-m", "reg", "-ps", "400", "-b", "16", "--lr", "1e-4", "--proj-lr-mult", "30",
               "--batch-forward"]


TRAINING_CAP = 100.0  # seconds one training run may take


def main_py_flags(args, folder: Path, run: Sequence[str], name: str, extra: Sequence[str] = ()) -> List[str]:
    """main.py's flags for two epochs of a training row.

    Args:
        args: the benchmark's flags (device, workers, training image size).
        folder: where the synthetic data (``data``) and the runs are.
        run: the row's own flags (``TEACHER_RUN``, ``STUDENT_RUN``).
        name: the run's folder under ``folder``.
        extra: flags added last (the student's ``--teacher``).

    Returns:
        The flags, without ``main.py`` itself.
    """
    return ["--directory", str(folder / name), "--data-root", str(folder / "data"), "-d", "synth-sfm",
            "--image-size", str(args.train_size), "--epochs", "2", "--no-val", "-j", str(args.workers),
            "--device", args.device, "--quiet", *run, *extra]


def _main_py(args, folder: Path, run: List[str], name: str, timeout: float, extra: Sequence[str] = ()) -> Dict:
    """Two epochs of main.py in a process of their own; the seconds of each epoch (history.json)."""
    directory = folder / name
    command = [sys.executable, str(ROOT / "main.py"), *main_py_flags(args, folder, run, name, extra)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "command": " ".join(command[1:])}
    row: Dict = {"wall_s": time.perf_counter() - started}
    histories = list(directory.glob("*/history.json"))
    if done.returncode != 0 or not histories:
        return {"error": (done.stderr or done.stdout)[-500:], "rc": done.returncode}
    history = json.loads(histories[0].read_text())
    row["epochs_s"] = [record.get("seconds") for record in history]
    if len(row["epochs_s"]) >= 2 and row["epochs_s"][1]:
        row["first_over_second"] = row["epochs_s"][0] / row["epochs_s"][1]
    row["checkpoint"] = str(next(histories[0].parent.glob("model_best.pth.tar"), ""))
    return row


def training_rows(args, folder: Path, budget: "Budget", keep: Callable[[Dict], None]) -> Dict:
    """The getting-started teacher's and student's two epochs, each run through main.py.

    Args:
        args: the benchmark's flags.
        folder: where the synthetic data and the runs go.
        budget: the run's budget (each run gets what is left, at most ``TRAINING_CAP``).
        keep: saves the rows so far; called after the teacher, so that a benchmark stopped
            by gpu_check.sh's time limit during the student keeps the teacher's row.

    Returns:
        ``{"teacher": row, "student": row}`` (no student when the teacher left no checkpoint).
    """
    data = subprocess.run([sys.executable, "-m", "aml.cli.synthetic", "--data-root", str(folder / "data"),
                           "--image-size", str(args.train_size + args.train_size // 8), *SYNTHETIC],
                          capture_output=True, text=True, timeout=300)
    if data.returncode != 0:
        raise RuntimeError(f"synthetic data: {data.stderr[-300:]}")
    rows: Dict = {"teacher": _main_py(args, folder, TEACHER_RUN, "teacher", min(budget.left(), TRAINING_CAP))}
    keep(rows)
    checkpoint = rows["teacher"].get("checkpoint")
    if checkpoint:
        rows["student"] = _main_py(args, folder, STUDENT_RUN, "student", min(budget.left(), TRAINING_CAP),
                                   ["--teacher", checkpoint])
    return rows


# -- profile, compile -----------------------------------------------------------------------

def profile_rows(args, paths, device: torch.device, folder: Path) -> Dict:
    """torch.profiler's top operations: a first extraction (new shapes) and a training batch
    with its wait for the loader's second batch, by host time and, on CUDA, by device time.
    What the loader's worker processes do (decoding) is not in the tables: the profiler sees
    this process."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    net = build(NETWORKS["mobilenet_v2 -> 512"], paths, args.image_size, device)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    size = args.image_size - 40  # shapes no earlier section met
    config = ExtractionConfig(device=device, workers=args.workers, decode=args.decode)
    tables: Dict[str, str] = {}
    with profile(activities=activities) as extraction:
        extract_vectors(net, list(paths[:64]), size, transform, config=config)
    trainer = _ts_trainer(args, paths, device, folder / "profile", fast=True)
    _training_mode(trainer)
    batches = iter(trainer._loader(trainer.train_split, trainer.epoch_tuples(trainer.train_split, 0), 0,
                                   shuffle=True))
    first = next(batches)  # the loader's workers started; a second batch where there is one
    with profile(activities=activities) as training:
        trainer.batch_losses(next(batches, first), trainer.train_split, backward=True)
    for name, run in (("first extraction", extraction), ("training batch", training)):
        tables[name] = run.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        if device.type == "cuda":
            tables[f"{name}, device time"] = run.key_averages().table(sort_by=sort, row_limit=15)
    return tables


def compile_row(args, paths, device) -> Optional[Dict]:
    """Eager against torch.compile for mobilenet_v2 -> 512: compile seconds, then images/s."""
    net = build(NETWORKS["mobilenet_v2 -> 512"], paths, args.image_size, device)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    eager_config = ExtractionConfig(device=device, workers=args.workers, decode=args.decode)
    compiled = eager_config.but(compile=True)
    extract_vectors(net, paths, args.image_size, transform, config=eager_config)
    _, eager = timed(device, lambda: extract_vectors(net, paths, args.image_size, transform, config=eager_config))
    _, first = timed(device, lambda: extract_vectors(net, paths, args.image_size, transform, config=compiled))
    _, steady = timed(device, lambda: extract_vectors(net, paths, args.image_size, transform, config=compiled))
    n = len(paths)
    compile_s = max(0.0, first - steady)
    saved_per_image = eager / n - steady / n
    return {"eager": n / eager, "compiled": n / steady, "compile_s": compile_s,
            "pays_after_images": compile_s / saved_per_image if saved_per_image > 0 else None}


# -- the run --------------------------------------------------------------------------------

class Budget:
    """Seconds left of ``--budget``."""

    def __init__(self, seconds: float):
        self.started, self.seconds = time.perf_counter(), seconds

    def spent(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return max(0.0, self.seconds - self.spent())


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--tuples", type=int, default=200, help="tuples of the ts epoch (0: no ts epoch)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--decode", default="auto", help="aml's decoding (auto: the device's default)")
    parser.add_argument("--amp-dtype", default="float16", help="aml's autocast dtype (default: float16)")
    parser.add_argument("--networks", default=",".join(NETWORKS), type=lambda s: [n for n in s.split(",") if n])
    parser.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                        help="time aml's other decodings and precisions on the first row (default: on)")
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True,
                        help="the first-forward probe (default: on)")
    parser.add_argument("--photos", default=None, help="a folder of real photos for the real-weights row")
    parser.add_argument("--training", action=argparse.BooleanOptionalAction, default=None,
                        help="two epochs of the getting-started teacher and student (default: on CUDA)")
    parser.add_argument("--train-size", type=int, default=256, help="image size of the training rows")
    parser.add_argument("--profile", action="store_true", help="torch.profiler's top operations")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time torch.compile too (default: on CUDA)")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds after which no further section starts (default: 330)")
    add_json_argument(parser, "gpu")
    args = parser.parse_args(argv)
    unknown = [n for n in args.networks if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network rows {unknown}; choose from {list(NETWORKS)}")
    return args


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    budget = Budget(args.budget)
    on_cuda = device.type == "cuda"
    results: Dict = {"device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
                     "torch": torch.__version__, "images": args.images, "image_size": args.image_size,
                     "workers": args.workers, "threads": torch.get_num_threads(), "skipped": []}

    def save() -> None:  # after every section, so that a run cut short still leaves its numbers
        write_record(args.json, "gpu", {k: v for k, v in vars(args).items() if k != "json"}, results)

    def section(name: str, run: Callable[[], object], wanted: bool = True) -> None:
        if not wanted:
            return
        if budget.left() <= 0:
            results["skipped"].append(name)
            print(f"\n{name}: left out, {budget.spent():.0f} s spent (--budget)", flush=True)
            return
        started = time.perf_counter()
        try:
            results[name] = run()
        except Exception as err:  # noqa: BLE001 - a section that fails is recorded; the run goes on
            results[name] = error_of(err)
            print(f"\n{name}: {results[name]['error']}", flush=True)
        results.setdefault("section_seconds", {})[name] = time.perf_counter() - started
        save()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_images(folder, args.images, args.image_size)
        print(f"{results['device']}, torch {torch.__version__}: {args.images} JPEGs of {args.image_size}x"
              f"{args.image_size * 3 // 4} and {args.image_size * 3 // 4}x{args.image_size}, {args.workers} workers",
              flush=True)
        section("cold_start", lambda: cold_start_rows(args, device), args.cold_start)
        if isinstance(results.get("cold_start"), dict) and "inference" in results["cold_start"]:
            print(cold_start_table(results["cold_start"]), flush=True)

        # short, and what decides the defaults: real weights' cosines, host syncs per batch
        section("real_weights", lambda: real_weights_row(args, device), args.photos is not None)
        section("syncs", lambda: sync_rows(args, paths, device, folder), on_cuda)

        results["extraction"] = []
        shown = list(VARIANTS) if args.variants else list(EVERY_ROW)
        print("\n| network | original img/s | " + " | ".join(f"{v} img/s (speed-up, cold, min cosine)" for v in shown)
              + " | network alone img/s | decode alone img/s | device decoding alone img/s |\n"
              + "|---" * (5 + len(shown)) + "|", flush=True)
        for k, name in enumerate(args.networks):
            if budget.left() <= 0:
                results["skipped"].append(f"extraction {name}")
                continue
            try:
                row = extraction_row(args, name, paths, device, shown if k == 0 else EVERY_ROW)
            except Exception as err:  # noqa: BLE001
                row = dict(error_of(err), network=name)
            results["extraction"].append(row)
            save()
            print(f"| {name} | {row.get('original', 0):.1f} | {' | '.join(_cell(row.get(v)) for v in shown)} | "
                  f"{row.get('network_alone', 0):.1f} | {row.get('decode_alone', 0):.1f} | "
                  f"{row.get('device_decode_alone', 0):.1f} |"
                  + (f" {row['error']}" if "error" in row else ""), flush=True)
            if on_cuda:
                torch.cuda.empty_cache()

        def keep(name: str) -> Callable[[Dict], None]:
            def saved(rows: Dict) -> None:  # a section's rows so far
                results[name] = rows
                save()
            return saved

        section("training", lambda: training_rows(args, folder, budget, keep("training")),
                args.training if args.training is not None else on_cuda)
        if isinstance(results.get("training"), dict):
            print(f"\ntraining epochs (s): {json.dumps(results['training'])}", flush=True)

        def ts_rows() -> Dict:
            slow = ts_epoch(args, paths, device, fast=False, folder=folder)
            fast = ts_epoch(args, paths, device, fast=True, folder=folder)
            print(f"\nts epoch of {args.tuples} tuples (mobilenet_v2 -> 512, batches of 5): one tuple at a time "
                  f"fp32 {slow:.1f} s, --batch-forward --amp {fast:.1f} s: {slow / fast:.1f}x", flush=True)
            return {"tuples": args.tuples, "original_s": slow, "fast_s": fast, "speedup": slow / fast}
        section("ts_epoch", ts_rows, args.tuples > 0)

        def profiled() -> Dict:
            tables = profile_rows(args, paths, device, folder)
            if args.json:
                Path(args.json + ".profile.txt").write_text(
                    "\n\n".join(f"== {name}\n{text}" for name, text in tables.items()))
            return tables
        section("profile", profiled, args.profile)
        section("compile", lambda: compile_row(args, paths, device),
                args.compile if args.compile is not None else on_cuda)
    results["seconds"] = budget.spent()
    save()
    print("\n" + gpu_targets.table(gpu_targets.checks(results)), flush=True)
    print(f"{results['seconds']:.0f} s in all", flush=True)
    return results


def cold_start_table(rows: Dict) -> str:
    """The cold-start probe as markdown tables: first / second call in seconds, per network and probe."""
    parts = []
    for kind, probes in (("inference", PROBES), ("training", TRAINING_PROBES)):
        lines = [f"| {kind}: first / second call (s) | " + " | ".join(probes) + " |", "|---" * (1 + len(probes)) + "|"]
        for arch, found in rows.get(kind, {}).items():
            cells = [f"{found[p]['first_s']:.2f} / {found[p]['steady_s']:.3f}" if "first_s" in found.get(p, {})
                     else found.get(p, {}).get("error", "")[:40] for p in probes]
            lines.append(f"| {arch} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main(sys.argv[1:])
