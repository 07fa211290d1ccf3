#!/usr/bin/env python
"""Images per second of the training loader alone (no network): what feeds a GPU.

    python benchmarks/tuple_loader.py                      # image sizes 1024 and 362, 1 and 2 workers
    python benchmarks/tuple_loader.py --image-sizes 1024 --workers 4

Writes generated 1024x768 JPEGs (the size of most retrieval-SfM-120k and Oxford images) and
times a DataLoader over aml's `TupleDataset` (7 images a tuple, batches of 5 tuples), best of
``--repeats``, against the same loader with each image normalised to float32 in the worker
(ToTensor and Normalize, the original's way): aml's workers hand on uint8 pixels, a quarter
of the bytes, and the compute device normalises them.
"""

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from aml.data.images import image_transform, load_and_resize
from aml.training.modes import TrainingTuple
from aml.training.tuples import TupleDataset, TupleItem, collate_list

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402 (benchmarks/ is not a package)
from timing import best_of  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TUPLE = 7  # a query, a positive and 5 negatives: the original's -nn 5


class NormalisedInWorkers(Dataset):
    """The original's loader: every image normalised to float32 in the worker."""

    def __init__(self, tuples: List[TrainingTuple], images: List[str], image_size: int):
        self.tuples, self.images, self.image_size = tuples, images, image_size
        self.transform = image_transform(MEAN, STD)

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, index: int) -> TupleItem:
        t = self.tuples[index]
        return TupleItem(t, [self.transform(load_and_resize(self.images[m], self.image_size)) for m in t.members])


def write_images(folder: Path, count: int) -> List[str]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        small = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        path = folder / f"{k}.jpg"
        Image.fromarray(small).resize((1024, 768), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def images_per_second(dataset: Dataset, workers: int, repeats: int) -> float:
    def drain() -> None:
        for _batch in DataLoader(dataset, batch_size=5, collate_fn=collate_list, num_workers=workers):
            pass

    return len(dataset) * TUPLE / best_of(drain, repeats)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-sizes", default="1024,362", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--tuples", type=int, default=40)
    parser.add_argument("--workers", default="1,2", type=lambda s: [int(w) for w in s.split(",")])
    parser.add_argument("--repeats", type=int, default=3)
    add_json_argument(parser, "tuple_loader")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: Dict[str, Dict[str, Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), 20)
        members = [tuple((q + k) % len(paths) for k in range(TUPLE)) for q in range(args.tuples)]
        tuples = [TrainingTuple(m, (-1, 1) + (0,) * (TUPLE - 2), (False,) * TUPLE) for m in members]
        for size in args.image_sizes:
            loaders = {"uint8 (aml)": TupleDataset(tuples, paths, size),
                       "float32 (the original's)": NormalisedInWorkers(tuples, paths, size)}
            rows[str(size)] = {str(w): {name: images_per_second(d, w, args.repeats) for name, d in loaders.items()}
                               for w in args.workers}
    for size, by_workers in rows.items():
        for workers, row in by_workers.items():
            print(f"{size} px, {workers} workers: "
                  + ", ".join(f"{name} {rate:.0f} images/s" for name, rate in row.items()))
    write_record(args.json, "tuple_loader", {k: v for k, v in vars(args).items() if k != "json"}, rows, device="cpu")
    return rows


if __name__ == "__main__":
    main()
