#!/usr/bin/env python
"""Benchmark of aml's GPU path against the original's one-image-at-a-time loop: one table.

    python benchmarks/gpu.py                       # on CUDA: 300 JPEGs at 1024 px, 500 ts tuples (< 5 min)
    python benchmarks/gpu.py --device cpu --images 6 --image-size 96 --tuples 10   # small, on the CPU

It writes its own JPEGs (1024x768 and 768x1024, smooth random content) and needs no
download. Networks have random weights with BatchNorm statistics calibrated on those images
(a random trunk's activations otherwise vanish and every descriptor looks alike).

Per network (mobilenet_v2 to 512 and 2048, vgg16, resnet101, mobilenet_v2 at 3 scales):

- original: PIL decoding in loader workers, one image per forward, fp32 (cirtorch's
  extract_vectors, written out here as the baseline);
- aml: ``aml.descriptors.extract_vectors`` with its defaults for the device (on CUDA: PIL
  pixels from the loader workers as uint8, normalised on the GPU, batches of 32 by shape,
  float16 autocast, channels_last), and with ``--variants`` its other options: nvJPEG
  decoding (with and without autocast), PIL normalised in the workers, bfloat16;
- network: the forward passes alone on ready batches (aml's batch and precision), the
  ceiling the pipeline can reach;
- decode: aml's loading and decoding alone (no network);
- cosine: the smallest over the images between the original's and aml's descriptors.

Then one ``ts`` training epoch (contrastive, 5 mined teacher negatives per tuple, batches
of 5 tuples, the student a mobilenet_v2 to 512) through aml's Trainer: one tuple at a time
in fp32 with PIL mining (the original's way) against ``--batch-forward --amp`` with aml's
extraction defaults. On CUDA, the ``--compile`` row times torch.compile on mobilenet_v2.
cuDNN's autotuner (``torch.backends.cudnn.benchmark``) stays off: it tunes every new input
shape, and shape buckets make many (one H200 run with it on spent minutes tuning).
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from aml.data.images import image_transform, load_and_resize
from aml.descriptors import ExtractionConfig, extract_vectors
from aml.descriptors.extraction import _BatchCap, _batches, _image_loader, resolve_amp, resolve_decoding
from aml.losses import build_loss
from aml.networks import build_network
from aml.networks.retrieval_net import multiscale_power
from aml.training.modes import get_mode
from aml.training.batchnorm import calibrate_batchnorm
from aml.training.optim import build_optimizer
from aml.training.trainer import Split, Trainer, TrainSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import make_images, original_loop  # noqa: E402  (benchmarks/ is not a package)
from record import add_json_argument, write_record  # noqa: E402

MULTISCALE = (1.0, 1 / math.sqrt(2), 0.5)
NETWORKS: Dict[str, Dict] = {  # row name -> build_network arguments and scales
    "mobilenet_v2 -> 512": dict(arch="mobilenet_v2", teacher_dim=512),
    "mobilenet_v2 -> 2048": dict(arch="mobilenet_v2", teacher_dim=2048),
    "vgg16": dict(arch="vgg16"),
    "resnet101": dict(arch="resnet101"),
    "mobilenet_v2 -> 512 (3 scales)": dict(arch="mobilenet_v2", teacher_dim=512, scales=MULTISCALE),
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


def build(spec: Dict, paths: Sequence[str], image_size: int, device: torch.device) -> torch.nn.Module:
    """A random network with BatchNorm statistics calibrated on a few of the images."""
    torch.manual_seed(0)
    net = build_network(spec["arch"], pretrained=False, teacher_dim=spec.get("teacher_dim"))
    transform = image_transform(net.meta["mean"], net.meta["std"])
    images = [transform(load_and_resize(p, image_size)) for p in paths[:8]]
    shape = images[0].shape
    calibrate_batchnorm(net, [torch.stack([x for x in images if x.shape == shape])])
    return net.to(device).eval()


def network_alone(net, shape, count, scales, msp, device, batch, dtype) -> float:
    """Seconds for ``count`` images of ``shape`` in ready batches (aml's batch and precision)."""
    x = torch.randn((batch,) + tuple(shape), device=device).contiguous(memory_format=torch.channels_last)
    net.to(memory_format=torch.channels_last)
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
    loader = _image_loader(decoding.dataset(paths, image_size, None, transform), workers, device)

    def run():
        for items, _ in _batches(iter(loader), lambda shape: 32, decoding.shape, 128):
            decoding.batch(items, device, net, None)
    _, seconds = timed(device, run)
    return seconds / len(paths)


def cosines(a: torch.Tensor, b: torch.Tensor) -> List[float]:
    return (F.normalize(a, dim=0) * F.normalize(b, dim=0)).sum(0).tolist()


# aml's variants timed per network: decoding and autocast dtype (the first is aml's default)
VARIANTS: Dict[str, Dict] = {
    "aml": {},
    "--decode device": dict(decode="device"),
    "--decode device --no-amp": dict(decode="device", amp=False),
    "--decode pil": dict(decode="pil"),
    "--amp-dtype bfloat16": dict(amp_dtype="bfloat16"),
}


def extraction_rows(args, paths, device) -> List[Dict]:
    rows = []
    for name in args.networks:
        spec = NETWORKS[name]
        net = build(spec, paths, args.image_size, device)
        scales = spec.get("scales", (1,))
        msp = multiscale_power(net, list(scales))
        transform = image_transform(net.meta["mean"], net.meta["std"])
        original_loop(net, paths[:2], args.image_size, scales, msp, device, args.workers)  # warm-up
        reference, t_original = timed(device, lambda: original_loop(net, paths, args.image_size, scales, msp, device,
                                                                     args.workers))
        row = {"network": name, "original": len(paths) / t_original}
        cells = []
        for variant, extra in VARIANTS.items():
            if variant != "aml" and not args.variants:
                continue
            config = ExtractionConfig(**dict(dict(device=device, workers=args.workers, decode=args.decode,
                                                  amp_dtype=args.amp_dtype), **extra))
            extract_vectors(net, paths[:4], args.image_size, transform, ms=scales, msp=msp, config=config)  # warm-up
            ours, t_aml = timed(device, lambda: extract_vectors(net, paths, args.image_size, transform, ms=scales,
                                                                msp=msp, config=config))
            cos = cosines(reference, ours)
            row[variant] = {"rate": len(paths) / t_aml, "speedup": t_original / t_aml, "cos_min": min(cos),
                            "cos_median": statistics.median(cos)}
            cells.append(f"{len(paths) / t_aml:.1f} ({t_original / t_aml:.1f}x, cos {min(cos):.5f})")
        shape = transform(load_and_resize(paths[1], args.image_size)).shape
        batch = 32 if device.type == "cuda" else 4
        row["network_alone"] = 1 / network_alone(net, shape, len(paths), scales, msp, device, batch,
                                                 resolve_amp(None, device))
        row["decode_alone"] = 1 / decode_alone(net, paths, args.image_size, device, args.workers, args.decode)
        rows.append(row)
        print(f"| {name} | {row['original']:.1f} | {' | '.join(cells)} | {row['network_alone']:.1f} | "
              f"{row['decode_alone']:.1f} |", flush=True)
        net = None  # free the device memory before the next network
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def training_db(count: int) -> Dict:
    """Clusters of 3 images (a landmark seen three times); every image is a query twice, paired
    with each of the other two images of its cluster (2 x ``count`` query/positive pairs)."""
    clusters = [i // 3 for i in range(count)]
    mates = [[j for j in range(3 * (i // 3), min(count, 3 * (i // 3) + 3)) if j != i] or [i] for i in range(count)]
    queries = [i for i in range(count) for _ in range(2)]
    positives = [mates[i][k % len(mates[i])] for i in range(count) for k in range(2)]
    return {"cids": [f"{i:04d}" for i in range(count)], "cluster": clusters, "qidxs": queries, "pidxs": positives}


def ts_epoch(args, paths, device, fast: bool, folder: Path) -> float:
    """Seconds of one ts epoch of ``args.tuples`` tuples: the original's way or aml's fast path."""
    net = build(NETWORKS["mobilenet_v2 -> 512"], paths, args.image_size, device)
    db = training_db(len(paths))
    teacher = F.normalize(torch.randn(512, len(paths), generator=torch.Generator().manual_seed(0)), dim=0)
    extraction = ExtractionConfig() if fast else ExtractionConfig(amp=False, decode="pil", batch_size=1)
    if fast and args.decode != "auto":
        extraction = extraction.but(decode=args.decode)
    settings = TrainSettings(image_size=args.image_size, neg_num=5, query_size=args.tuples, pool_size=len(paths),
                             batch_size=5, epochs=1, val=False, batch_forward=fast, autocast=fast, seed=0)
    optimizer = build_optimizer(net, "adam", 1e-6, 0.9, 1e-6)
    trainer = Trainer(net, build_loss("contrastive", 0.7, 0.1).to(device), optimizer,
                      get_mode("ts"), Split(db, list(paths), teacher), None, folder / ("fast" if fast else "orig"),
                      settings, extraction.but(workers=args.workers, device=str(device)))
    _, seconds = timed(device, trainer.fit)
    return seconds


def compile_row(args, paths, device) -> Optional[Dict]:
    """Eager against torch.compile for mobilenet_v2 -> 512: compile seconds, then images/s."""
    net = build(NETWORKS["mobilenet_v2 -> 512"], paths, args.image_size, device)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    eager_config = ExtractionConfig(device=device, workers=args.workers, decode=args.decode)
    compiled = eager_config.but(compile=True)
    extract_vectors(net, paths[:4], args.image_size, transform, config=eager_config)
    _, eager = timed(device, lambda: extract_vectors(net, paths, args.image_size, transform, config=eager_config))
    _, first = timed(device, lambda: extract_vectors(net, paths, args.image_size, transform, config=compiled))
    _, steady = timed(device, lambda: extract_vectors(net, paths, args.image_size, transform, config=compiled))
    n = len(paths)
    compile_s = max(0.0, first - steady)
    saved_per_image = eager / n - steady / n
    return {"eager": n / eager, "compiled": n / steady, "compile_s": compile_s,
            "pays_after_images": compile_s / saved_per_image if saved_per_image > 0 else None}


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--tuples", type=int, default=500, help="tuples of the ts epoch (0: no training rows)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--decode", default="auto", help="aml's decoding (auto: workers on CUDA, pil on the CPU)")
    parser.add_argument("--amp-dtype", default="float16", help="aml's autocast dtype (default: float16)")
    parser.add_argument("--networks", default=",".join(NETWORKS), type=lambda s: [n for n in s.split(",") if n])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time torch.compile too (default: on CUDA only)")
    parser.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                        help="also time aml's other decodings and fp16 (default: on)")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds after which the optional torch.compile row is left out (default: 240)")
    add_json_argument(parser, "gpu")
    args = parser.parse_args(argv)
    unknown = [n for n in args.networks if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network rows {unknown}; choose from {list(NETWORKS)}")
    device = torch.device(args.device)
    started = time.perf_counter()

    def save() -> None:  # after every section, so that a run cut short still leaves its numbers
        write_record(args.json, "gpu", {k: v for k, v in vars(args).items() if k != "json"}, results)

    results: Dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "images": args.images, "image_size": args.image_size,
                     "workers": args.workers, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_images(folder, args.images, args.image_size)
        print(f"{results['device']}, torch {torch.__version__}: {args.images} JPEGs of {args.image_size}x"
              f"{args.image_size * 3 // 4} and {args.image_size * 3 // 4}x{args.image_size}, {args.workers} workers")
        shown = [v for v in VARIANTS if v == "aml" or args.variants]
        print("| network | original img/s | " + " | ".join(f"{v} img/s (speed-up, min cosine)" for v in shown) +
              " | network alone img/s | decode alone img/s |\n" + "|---" * (4 + len(shown)) + "|", flush=True)
        results["extraction"] = extraction_rows(args, paths, device)
        save()
        if args.tuples:
            slow = ts_epoch(args, paths, device, fast=False, folder=folder)
            fast = ts_epoch(args, paths, device, fast=True, folder=folder)
            results["ts_epoch"] = {"tuples": args.tuples, "original_s": slow, "fast_s": fast, "speedup": slow / fast}
            save()
            print(f"\nts epoch of {args.tuples} tuples (mobilenet_v2 -> 512, batches of 5): one tuple at a time "
                  f"fp32 {slow:.1f} s, --batch-forward --amp {fast:.1f} s: {slow / fast:.1f}x", flush=True)
        wanted = args.compile if args.compile is not None else device.type == "cuda"
        if wanted and time.perf_counter() - started > args.budget:
            print(f"\ntorch.compile row left out: {time.perf_counter() - started:.0f} s spent (--budget)")
        elif wanted:
            row = compile_row(args, paths, device)
            results["compile"] = row
            pays = (f"pays for itself after {row['pays_after_images']:,.0f} images" if row["pays_after_images"]
                    else "never pays")
            print(f"\ntorch.compile, mobilenet_v2 -> 512: eager {row['eager']:.1f} img/s, compiled "
                  f"{row['compiled']:.1f} img/s, compile {row['compile_s']:.1f} s: {pays}", flush=True)
    results["seconds"] = time.perf_counter() - started
    print(f"\n{results['seconds']:.0f} s in all", flush=True)
    save()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
