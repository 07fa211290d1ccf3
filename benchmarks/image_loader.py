#!/usr/bin/env python
"""What receiving images from extraction's loader costs the main process, per image.

    python benchmarks/image_loader.py                  # 1024 px, 5 repeats, a core for the main process
    python benchmarks/image_loader.py --workers 4 --image-size 362

On a GPU the main process is the one serial part of extraction: it receives every image from
the loader workers, then queues the decoding and the network. What it spends per image on
receiving is a ceiling on extraction's rate, whatever the GPU. This benchmark drains aml's
extraction loader (`aml.descriptors.extraction._image_loader`, no decoding after it and no
network) over generated 1024x768 JPEGs and measures the main thread's CPU time per image
(``time.thread_time``: what it computes and what the kernel does for it, not its waits), for
each decoding with one image a message and with the decoding's own chunk
(`aml.data.encoded_images.LoaderChunk`). Median and range of ``--repeats`` runs.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

from aml.data.images import image_transform
from aml.descriptors.extraction import DECODINGS, Decoding, _image_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402 (benchmarks/ is not a package)
from tuple_loader import MEAN, STD, write_images  # noqa: E402

CPU = torch.device("cpu")  # no pinning: the pinning thread would share the main process's time


def main_thread_cost(decoding: Decoding, paths: List[str], image_size: int, workers: int) -> float:
    """Microseconds of the main thread's CPU time per image, draining the loader once."""
    dataset = decoding.dataset(paths, image_size, None, image_transform(MEAN, STD))
    start = time.thread_time()
    count = sum(1 for _ in _image_loader(dataset, workers, CPU, decoding))
    return (time.thread_time() - start) / count * 1e6


def summary(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=160, help="images per run (20 distinct files)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)),
                        help="loader workers (default: the cores but one, at most 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decodings", default="device,workers,pil", type=lambda s: s.split(","))
    add_json_argument(parser, "image_loader")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: Dict[str, Dict[str, Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        files = write_images(Path(folder), 20)
        paths = [files[k % len(files)] for k in range(args.images)]
        for name in args.decodings:
            decoding = DECODINGS[name]
            chunks = sorted({1, decoding.chunk})
            rows[name] = {str(chunk): summary([main_thread_cost(replace(decoding, chunk=chunk), paths,
                                                                 args.image_size, args.workers)
                                                for _ in range(args.repeats)]) for chunk in chunks}
    for name, by_chunk in rows.items():
        for chunk, cost in by_chunk.items():
            print(f"{name}, {chunk} a message: {cost['median']:.0f} us per image "
                  f"({cost['min']:.0f} to {cost['max']:.0f})")
    write_record(args.json, "image_loader", {k: v for k, v in vars(args).items() if k != "json"}, rows)
    return rows


if __name__ == "__main__":
    main()
