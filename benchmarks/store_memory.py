#!/usr/bin/env python
"""How much memory opening a search store takes, as a multiple of its float32 descriptors:
the peak of numpy's allocations while `aml.search.open_database` reads, checks and whitens
them (tracemalloc; faiss's own copy, made at the first search, is not counted).

    python benchmarks/store_memory.py                           # 600,000 x 128, whitened
    python benchmarks/store_memory.py --images 1000000 --dim 2048 --no-whitening

A synthetic store of random unit descriptors (float32 shards of 65,536 rows) with a random
whitening of full rank, written into a temporary folder and removed afterwards.
"""

import argparse
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Dict

import numpy as np

from aml.descriptors.key import DescriptorKey
from aml.descriptors.store import DescriptorStore, StoreKey
from aml.evaluation import Reranking
from aml.search import open_database
from aml.search.store import _write_search_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)


def make_store(folder: Path, images: int, dim: int, whitened: bool) -> None:
    """A complete search store of ``images`` random unit descriptors in ``folder``."""
    names = [f"img{i:07d}.jpg" for i in range(images)]
    store = DescriptorStore.create(folder, names, StoreKey(DescriptorKey("0" * 16, 1024), "bench", "float32", 65536), dim)
    rng = np.random.default_rng(0)
    for k in range(store.shards):
        block = rng.standard_normal((dim, len(store.shard_rows(k))), dtype=np.float32)
        store.write_shard(k, block / np.linalg.norm(block, axis=0))
    store.record_hashes()
    whitening = None
    if whitened:
        projection = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
        whitening = (rng.standard_normal((dim, 1)) * 0.01, projection)
    _write_search_files(store, "bench", whitening, Reranking(), "cpu")


def measure(folder: Path) -> Dict[str, float]:
    """The peak of numpy's allocations while the store opens, and what stays, in multiples of
    its float32 descriptors (opened once before, so that what its first opening imports is
    not counted)."""
    open_database(folder)
    tracemalloc.start()
    database = open_database(folder)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = database.vecs.size * 4
    return {"store_mib": size / 2**20, "peak": peak / size, "held": held / size}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--no-whitening", action="store_true", help="a store indexed without -w")
    add_json_argument(parser, "store_memory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "store"
        make_store(folder, args.images, args.dim, not args.no_whitening)
        found = measure(folder)
    print(
        f"store of {args.images} x {args.dim} ({found['store_mib']:.0f} MiB float32, "
        f"{'not ' if args.no_whitening else ''}whitened): peak while opening {found['peak']:.2f}x, "
        f"held {found['held']:.2f}x (faiss's copy at the first search not counted)"
    )
    settings = {"images": args.images, "dim": args.dim, "whitened": not args.no_whitening}
    write_record(args.json, "store_memory", settings, found, device="cpu")


if __name__ == "__main__":
    main()
