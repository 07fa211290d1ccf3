#!/usr/bin/env python
"""Benchmark of descriptor extraction (images/second), batched vs one image per forward.

    python benchmarks/extract.py --image-size 362 --images 48 --archs mobilenet_v2,resnet101

Writes generated JPEGs (landscape and portrait, like Oxford/Paris) to a temporary folder,
then times aml.descriptors.extract_vectors on the CPU and, when present, on CUDA (fp32,
and bf16 autocast with channels_last).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aml.data.images import image_transform
from aml.descriptors import extract_vectors
from aml.networks import build_network


def make_images(folder: Path, count: int, side: int) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        w, h = (side, side * 3 // 4) if i % 3 else (side * 3 // 4, side)
        small = rng.integers(0, 256, size=(h // 16, w // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        paths.append(folder / f"{i:04d}.jpg")
        image.save(paths[-1], quality=90)
    return [str(p) for p in paths]


def time_run(net, paths, image_size, device, **options) -> float:
    transform = image_transform(net.meta["mean"], net.meta["std"])
    extract_vectors(net, paths[:4], image_size, transform, device=device, **options)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    extract_vectors(net, paths, image_size, transform, device=device, **options)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=362)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--archs", default="mobilenet_v2,resnet101")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="batch of the batched rows (GPU rows also use 32)")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(Path(folder), args.images, args.image_size)
        print(f"{args.images} images, longer side {args.image_size}, workers {args.workers}, "
              f"torch threads {torch.get_num_threads()}")
        print("| arch | device | mode | img/s |\n|---|---|---|---|")
        for arch in args.archs.split(","):
            net = build_network(arch, pretrained=False).eval()
            for device in devices:
                modes = {"one-by-one": dict(batch_size=1), f"batched {args.batch_size}": dict(batch_size=args.batch_size),
                         "one-by-one channels_last": dict(batch_size=1, channels_last=True),
                         f"batched {args.batch_size} channels_last": dict(batch_size=args.batch_size,
                                                                         channels_last=True)}
                if device == "cuda":
                    modes["batched 32"] = dict(batch_size=32)
                    modes["batched 32 bf16 channels_last"] = dict(batch_size=32, amp=True, channels_last=True)
                for mode, options in modes.items():
                    rate = time_run(net, paths, args.image_size, device, workers=args.workers, **options)
                    print(f"| {arch} | {device} | {mode} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
