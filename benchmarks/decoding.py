#!/usr/bin/env python
"""How far device decoding's pixels are from PIL's (the original's), per kind of file.

    python benchmarks/decoding.py                  # the CPU (libjpeg), and CUDA (nvJPEG) when present

Writes generated images (JPEG 4:2:0 and 4:4:4, progressive, grayscale, CMYK, PNG) at 1024x768
and prints, per device and image size, the mean and largest absolute difference in grey
levels (0-255) between aml's device path and PIL's decoding + LANCZOS resizing.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aml.data.encoded_images import decode_batch, read_payload
from aml.data.images import image_transform, load_and_resize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
KINDS = {
    "jpeg 4:2:0": dict(suffix=".jpg", quality=90),
    "jpeg 4:4:4": dict(suffix=".jpg", quality=90, subsampling=0),
    "progressive": dict(suffix=".jpg", quality=90, progressive=True),
    "grayscale": dict(suffix=".jpg", quality=90, mode="L"),
    "cmyk": dict(suffix=".jpg", quality=90, mode="CMYK"),
    "png": dict(suffix=".png"),
}


def make(folder: Path, name: str, spec: dict) -> Path:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(32, 43, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((1024, 768), Image.Resampling.BICUBIC).convert(spec.get("mode", "RGB"))
    path = folder / (name.replace(" ", "_").replace(":", "") + spec["suffix"])
    options = {k: v for k, v in spec.items() if k not in ("suffix", "mode")}
    image.save(path, **options)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_json_argument(parser, "decoding")
    args = parser.parse_args(argv)
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    transform = image_transform(MEAN, STD)
    scale = torch.tensor(STD).view(3, 1, 1) * 255
    print("| device | file | size | mean abs difference | largest |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: make(Path(tmp), name, spec) for name, spec in KINDS.items()}
        for device in devices:
            for name, path in paths.items():
                for size in (1024, 362):
                    row = {"device": device, "file": name, "image_size": size}
                    try:
                        ours = decode_batch([read_payload(path, size)], torch.device(device), MEAN, STD)[0].cpu()
                        difference = ((ours - transform(load_and_resize(path, size))) * scale).abs()
                        row.update(mean_abs=difference.mean().item(), max_abs=difference.max().item())
                        print(f"| {device} | {name} | {size} | {row['mean_abs']:.2f} | {row['max_abs']:.0f} |",
                              flush=True)
                    except Exception as err:  # noqa: BLE001 (a row that fails records why; the others go on)
                        row["error"] = f"{type(err).__name__}: {err}"
                        print(f"| {device} | {name} | {size} | {row['error']} | |", flush=True)
                    rows.append(row)
                    write_record(args.json, "decoding", {}, rows)  # after every row: a run cut short keeps them


if __name__ == "__main__":
    main()
