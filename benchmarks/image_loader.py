#!/usr/bin/env python
"""What receiving images from extraction's loader costs the main process, per image.

    python benchmarks/image_loader.py                  # 1024 px, 5 repeats, a core for the main process
    python benchmarks/image_loader.py --workers 4 --image-size 362

On a GPU the main process is the one serial part of extraction: it receives every image from
the loader workers, then queues the decoding and the network. What it spends per image on
receiving is a ceiling on extraction's rate, whatever the GPU. This benchmark drains aml's
extraction loader (`aml.descriptors.extraction._image_loader`, no decoding after it and no
network) over generated 1024x768 JPEGs and measures, per image, the main thread's CPU time
(``time.thread_time``: what it computes and what the kernel does for it, not its waits) and
the main process's (``time.process_time``: with its threads, so with threaded workers their
reading and decoding too), for each decoding with its workers as processes (DataLoader's, one
image a message) and as threads (`aml.utils.threads.ordered_map`), whichever extraction uses
(``settings.workers_as``): for PIL's decodings threads share Python's lock, which only a
machine with many cores shows. Median and range of ``--repeats`` runs; the wall time of a
drain is its rate. The record is written after every decoding.
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

KINDS = {False: "processes", True: "threads"}  # a decoding's ``threads`` -> how its workers run
CPU = torch.device("cpu")  # no pinning: the pinning thread would share the main process's time


def costs(decoding: Decoding, paths: List[str], image_size: int, workers: int) -> Dict[str, float]:
    """Microseconds per image of the main thread's and the main process's CPU time, and the
    drain's rate in images per second, draining the loader once."""
    dataset = decoding.dataset(paths, image_size, None, image_transform(MEAN, STD))
    thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
    count = sum(1 for _ in _image_loader(dataset, workers, CPU, decoding))
    return {"thread_us": (time.thread_time() - thread) / count * 1e6,
            "process_us": (time.process_time() - process) / count * 1e6,
            "rate": count / (time.perf_counter() - wall)}


def summary(runs: List[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    return {key: {"median": statistics.median(run[key] for run in runs), "min": min(run[key] for run in runs),
                  "max": max(run[key] for run in runs)} for key in runs[0]}


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
    rows: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    settings["workers_as"] = {name: KINDS[DECODINGS[name].threads] for name in args.decodings}
    with tempfile.TemporaryDirectory() as folder:
        files = write_images(Path(folder), 20)
        paths = [files[k % len(files)] for k in range(args.images)]
        for name in args.decodings:
            rows[name] = {kind: summary([costs(replace(DECODINGS[name], threads=threads), paths, args.image_size,
                                               args.workers) for _ in range(args.repeats)])
                          for threads, kind in KINDS.items()}
            write_record(args.json, "image_loader", settings, rows, device="cpu")
    for name, by_kind in rows.items():
        for kind, cost in by_kind.items():
            print(f"{name}, workers as {kind}: main thread {cost['thread_us']['median']:.0f} us per image, "
                  f"main process {cost['process_us']['median']:.0f} us, {cost['rate']['median']:.0f} images/s")
    return rows


if __name__ == "__main__":
    main()
