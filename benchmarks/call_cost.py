#!/usr/bin/env python
"""What an extraction call costs whatever its size: preparing the network, starting the
loader's workers, and a whole call for one image.

    python benchmarks/call_cost.py                  # mobilenet_v2 and resnet101; 1, 2 and 8 workers
    python benchmarks/call_cost.py --archs resnet18 --workers 1,4

For a large call these are noise; for the 70 queries of a test set, a search query or a
benchmark of a few hundred images they can be most of its time. Per network (random weights,
on ``--device``), the smallest of ``--repeats`` times of:

- ``load``: `aml.networks.checkpoint.load_network` of the network's checkpoint as training
  writes it (its weights and Adam's state), what test.py, extract_features.py and a search
  query do before anything else;
- ``fold``: the network's copy with BatchNorm folded (`aml.networks.inference.inference_copy`),
  which a call makes when it encodes many pixels or with ``fold_batchnorm=True``;
- ``processes N`` / ``threads N``: starting extraction's loader (`aml.descriptors.extraction._image_loader`,
  device decoding's items) with N workers up to its first image, the workers as processes
  (DataLoader's; each a copy of this process, so this grows with the process's memory) or as
  threads (device decoding's);
- ``call``: `aml.descriptors.extract_vectors` of one 64x48 JPEG, the fold forced, with no
  worker, then with 8 asked for (one starts: there is one image; on the CPU, no more than the
  cores torch's threads leave free) for device decoding (threads) and for ``workers``
  decoding (processes).
"""

import argparse
import sys
from dataclasses import replace
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from aml.data.images import image_transform
from aml.descriptors import ExtractionConfig, extract_vectors
from aml.descriptors.extraction import DECODINGS, _image_loader
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, load_network, save_checkpoint
from aml.networks.inference import inference_copy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402 (benchmarks/ is not a package)
from timing import best_of  # noqa: E402


def smallest(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The smallest time of ``repeats`` runs, after one to warm up, each until ``device`` has
    done what it was given (on CUDA a run otherwise times only the launches)."""

    def done() -> None:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    done()
    return best_of(done, repeats)


def measured(run: Callable[[], float]) -> object:
    """``run()``'s seconds, or the error it raised (a measurement that fails does not end the run)."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"


def saved_as_training_saves(net: torch.nn.Module, path: Path) -> Path:
    """``net`` written to ``path`` as an epoch's checkpoint: its weights and Adam's state (one
    step of zero gradients, which leaves the weights as they are)."""
    optimizer = torch.optim.Adam(net.parameters())
    for parameter in net.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    net.zero_grad(set_to_none=True)
    return save_checkpoint(checkpoint_state(net, 1, 0.0, optimizer), path)


def first_image(images: List[str], workers: int, threads: bool) -> None:
    """Start extraction's loader with ``workers`` workers, take its first image, stop it."""
    decoding = replace(DECODINGS["device"], threads=threads)
    loader = _image_loader(decoding.dataset(images, 64, None, None), workers, torch.device("cpu"), decoding)
    next(loader)
    loader.close()


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="mobilenet_v2,resnet101", type=lambda s: s.split(","))
    parser.add_argument("--workers", default="1,2,8", type=lambda s: [int(w) for w in s.split(",")])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    add_json_argument(parser, "call_cost")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    rows: Dict[str, Dict[str, object]] = {}
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    with tempfile.TemporaryDirectory() as folder:
        image = str(Path(folder) / "image.jpg")
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
        images = [image] * (4 * max(args.workers))  # something for every worker to read
        for arch in args.archs:
            torch.manual_seed(0)
            net = build_network(arch, pretrained=False).eval().to(device, memory_format=torch.channels_last)
            transform = image_transform(net.meta["mean"], net.meta["std"])

            def call(workers: int, decode: str, net=net, transform=transform) -> None:
                config = ExtractionConfig(workers=workers, device=device, decode=decode, fold_batchnorm=True)
                extract_vectors(net, [image], 64, transform, config=config)

            checkpoint = saved_as_training_saves(net, Path(folder) / f"{arch}.pth.tar")
            work: Dict[str, Callable[[], object]] = {
                "load": lambda checkpoint=checkpoint: load_network(checkpoint),
                "fold": lambda net=net: inference_copy(net),
            }
            for kind in ("processes", "threads"):
                work.update({f"{kind} {w}": lambda w=w, kind=kind: first_image(images, w, kind == "threads")
                             for w in args.workers})
            work["call, no worker"] = lambda: call(0, "device")
            work["call, 8 threads asked"] = lambda: call(8, "device")
            work["call, 8 processes asked"] = lambda: call(8, "workers")
            rows[arch] = {}
            for name, run in work.items():
                rows[arch][name] = measured(lambda run=run: smallest(run, args.repeats, device))
                write_record(args.json, "call_cost", settings, rows)  # after every number: a run cut short keeps them
            print(f"{arch} on {device}: " + ", ".join(
                f"{name} {value * 1e3:.0f} ms" if isinstance(value, float) else f"{name} {value}"
                for name, value in rows[arch].items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
