#!/usr/bin/env python
"""Benchmark of descriptor extraction on the CPU: the original's loop against aml, side by side.

    python benchmarks/extract.py                                   # the README's CPU table
    python benchmarks/extract.py --archs mobilenet_v2 --scales single --batch-sizes 1,2,3,4 \
        --json benchmarks/results/batch_sweep.json                 # the sweep behind CPU_PIXEL_BUDGET
    python benchmarks/extract.py --archs resnet101 --image-sizes 362 --images 12

Writes generated JPEGs (1024x768 and 768x1024, like Oxford/Paris) to a temporary folder and
times, per network, image size and scales (single, or 1, 1/sqrt(2), 1/2):

- original: the original's loop (benchmarks/baseline.py: PIL in a loader worker, one image
  per forward, fp32, contiguous tensors);
- aml: ``extract_vectors`` with its CPU defaults (PIL, channels_last, batches by pixel budget);
- aml --decode device: the same with JPEGs decoded by torchvision's libjpeg and resized by torch;
- with ``--batch-sizes``: aml with each fixed batch size instead of the budget.

Defaults follow the issue's measurement: 1 compute thread, 1 loader worker. Each number is
the best of ``--repeats`` runs.
"""

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Callable, List

import torch

from aml.data.images import image_transform, load_and_resize
from aml.descriptors import ExtractionConfig, extract_vectors
from aml.networks import build_network
from aml.networks.retrieval_net import multiscale_power
from aml.training.batchnorm import calibrate_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import make_images, original_loop  # noqa: E402  (benchmarks/ is not a package)
from record import add_json_argument, write_record  # noqa: E402
from timing import best_of  # noqa: E402

SCALES = {"single": (1.0,), "3 scales": (1.0, 1 / math.sqrt(2), 0.5)}


def best_rate(run: Callable[[], object], count: int, repeats: int) -> float:
    return count / best_of(run, repeats)


def network(arch: str, paths: List[str], size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, teacher_dim=512 if arch.startswith("mobilenet") else None)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    first = transform(load_and_resize(paths[1], size))
    calibrate_batchnorm(net, [first[None]])  # a random trunk's activations vanish otherwise
    return net.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-sizes", default="362,1024", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--scales", default="single,3 scales", type=lambda s: s.split(","))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--archs", default="mobilenet_v2,resnet101")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-sizes", default="", type=lambda s: [int(v) for v in s.split(",") if v])
    add_json_argument(parser, "extract")
    args = parser.parse_args(argv)
    rows = []
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(Path(folder), args.images, 1024)
        print(f"{args.images} JPEGs of 1024x768 and 768x1024, {args.threads} thread(s), {args.workers} worker(s), "
              f"best of {args.repeats}")
        sweep = "".join(f" batch {b} |" for b in args.batch_sizes)
        print(f"| network | px | scales | original img/s | aml img/s | aml/original | aml --decode device img/s |{sweep}")
        print("|---" * (7 + len(args.batch_sizes)) + "|", flush=True)
        for arch in args.archs.split(","):
            for size in args.image_sizes:
                net = network(arch, paths, size)
                transform = image_transform(net.meta["mean"], net.meta["std"])
                for scale_name in args.scales:
                    scales = SCALES[scale_name]
                    msp = multiscale_power(net, list(scales))
                    n = len(paths)
                    original = best_rate(lambda: original_loop(net, paths, size, scales, msp, device, args.workers),
                                         n, args.repeats)

                    def aml(**options):
                        config = ExtractionConfig(device=device, workers=args.workers, **options)
                        return best_rate(lambda: extract_vectors(net, paths, size, transform, ms=scales, msp=msp,
                                                                 config=config),
                                         n, args.repeats)
                    ours, device_decoded = aml(), aml(decode="device")
                    batches = {str(b): aml(batch_size=b) for b in args.batch_sizes}
                    cells = "".join(f" {rate:.2f} |" for rate in batches.values())
                    rows.append({"network": arch, "image_size": size, "scales": scale_name, "original": original,
                                 "aml": ours, "aml_decode_device": device_decoded, "batch_sizes": batches})
                    print(f"| {arch} | {size} | {scale_name} | {original:.2f} | {ours:.2f} | {ours / original:.2f}x | "
                          f"{device_decoded:.2f} |{cells}", flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    write_record(args.json, "extract", settings, rows, device="cpu")


if __name__ == "__main__":
    main()
