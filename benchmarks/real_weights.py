#!/usr/bin/env python
"""The numerical claims of the fast paths, measured with real ImageNet weights on real photos.

    python benchmarks/real_weights.py [--image-sizes 362,1024] [--json FILE]   # default: benchmarks/results/real_weights.json

The network is MobileNetV2 with torchvision's IMAGENET1K_V1 weights (the original's starting
point) and GeM, 1280-d; the photos are the 15 of scikit-image's wheel. Per image size it
measures, against the plain fp32 one-image-at-a-time extraction:

- BatchNorm folded into the convolutions (the inference copy): max abs difference, min cosine;
- images of one shape batched together: max abs difference;
- float16 and bfloat16 autocast: min and median cosine;
- the exported student (TorchScript, ONNX through onnxruntime): max abs difference.

It prints one table and writes the numbers, with the machine and versions, as JSON.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from aml.data.images import image_transform, load_and_resize
from aml.data.photos import sample_photos
from aml.descriptors import ExtractionConfig, extract_vectors
from aml.export import DeployedStudent, check_exports, export_onnx, export_torchscript
from aml.layers.pooling import GeM
from aml.networks.backbones import build_trunk
from aml.networks.imagenet import get_imagenet_weights
from aml.networks.retrieval_net import ImageRetrievalNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

ARCH = "mobilenet_v2"


def imagenet_gem(arch: str = ARCH, pretrained: bool = True) -> ImageRetrievalNet:
    """The ImageNet trunk of ``arch`` (random weights unless ``pretrained``) with GeM and L2
    normalisation, no projection, in eval mode."""
    weights = get_imagenet_weights(arch)
    trunk = build_trunk(arch, pretrained=pretrained)
    channels = [m for m in torch.nn.Sequential(*trunk).modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels
    meta = {"architecture": arch, "pooling": "gem", "local_whitening": False, "regional": False, "whitening": False,
            "mean": list(weights.mean), "std": list(weights.std), "outputdim": channels}
    return ImageRetrievalNet(trunk, None, GeM(), None, meta).eval()


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=0) * F.normalize(b, dim=0)).sum(0)


def measure(net: ImageRetrievalNet, photos: List[str], image_size: int) -> Dict[str, float]:
    """Every comparison of the module docstring at one image size."""
    transform = image_transform(net.meta["mean"], net.meta["std"])

    def run(**options) -> torch.Tensor:
        return extract_vectors(net, photos, image_size, transform, config=ExtractionConfig(workers=0, **options))

    reference = run(batch_size=1, fold_batchnorm=False, channels_last=False)
    folded = run(batch_size=1, fold_batchnorm=True)
    batched = run(fold_batchnorm=False, channels_last=False, batch_size=len(photos))
    results = {"fold_max_abs": float((folded - reference).abs().max()),
               "fold_min_cosine": float(_cosines(folded, reference).min()),
               "batched_max_abs": float((batched - reference).abs().max())}
    for dtype in ("float16", "bfloat16"):
        cos = _cosines(run(fold_batchnorm=False, amp=True, amp_dtype=dtype), reference)
        results[f"{dtype}_min_cosine"] = float(cos.min())
        results[f"{dtype}_median_cosine"] = float(cos.median())
    model = DeployedStudent(net)
    images = [torch.from_numpy(np.asarray(load_and_resize(p, image_size), dtype=np.float32) / 255)
              .permute(2, 0, 1)[None] for p in photos]
    with tempfile.TemporaryDirectory() as folder:
        files = {"torchscript": export_torchscript(model, Path(folder) / "s.pt", images[0]),
                 "onnx": export_onnx(model, Path(folder) / "s.onnx", images[0])}
        for name, diff in check_exports(model, files, images).items():
            results[f"{name}_max_abs"] = diff
    return results


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-sizes", default="362,1024")
    add_json_argument(parser, "real_weights")
    args = parser.parse_args(argv)
    photos = [str(p) for p in sample_photos().values()]
    net = imagenet_gem()
    start = time.time()
    rows = {int(size): measure(net, photos, int(size)) for size in args.image_sizes.split(",")}
    record = {"network": f"{ARCH} {get_imagenet_weights(ARCH).tag} + GeM", "photos": len(photos), "results": rows,
              "seconds": round(time.time() - start, 1)}
    names = list(next(iter(rows.values())))
    print("| measurement | " + " | ".join(f"{size} px" for size in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{rows[size][name]:.7g}" for size in rows) + " |")
    write_record(args.json, "real_weights", {"image_sizes": args.image_sizes}, record, device="cpu")
    return record


if __name__ == "__main__":
    main()
