#!/usr/bin/env python
"""Benchmark of the +1M search: a test database plus 1M distractors, 70 queries.

    python benchmarks/search.py                          # 1M x 2048 float16, on the CPU
    python benchmarks/search.py --device cuda            # the blocked search on a GPU
    python benchmarks/search.py --distractors 100000     # smaller

Writes a descriptor store of random unit distractors (float16 shards, as test.py writes them
with --distractor-dtype float16) to --folder once, then runs each method in its own process
and reports seconds and that process's peak resident memory:

- blocked: aml's search (aml.evaluation.ranking.positions_with_distractors), shard by shard
  from disk, exact places of the test database's images, mAP;
- numpy: the original's way, all descriptors in memory as float32, the full score matrix and
  np.argsort of it, mAP;
- faiss: faiss.IndexFlatIP over all descriptors in memory (float32), top-100 per query only
  (a flat index returns the k best, not the places of every positive, so no exact mAP).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from aml.descriptors.key import DescriptorKey
from aml.descriptors.store import DescriptorStore, StoreKey, open_store
from aml.evaluation.metrics import evaluate_positions, evaluate_ranks
from aml.evaluation.ranking import positions_with_distractors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

METHODS = ("blocked", "numpy", "faiss")


def unit_columns(rng: np.random.Generator, dim: int, count: int) -> np.ndarray:
    x = rng.standard_normal((dim, count), dtype=np.float32)
    return x / np.linalg.norm(x, axis=0, keepdims=True)


def problem(args) -> tuple:
    """Test database, queries (noisy copies of database images) and ground truth."""
    rng = np.random.default_rng(0)
    database = unit_columns(rng, args.dim, args.database)
    per_query = 20
    gnd, queries = [], []
    for q in range(args.queries):
        members = np.arange(q * per_query, (q + 1) * per_query) % args.database
        centre = database[:, members].mean(axis=1) + rng.standard_normal(args.dim, dtype=np.float32) / (4 * np.sqrt(args.dim))
        queries.append(centre / np.linalg.norm(centre))
        gnd.append({"easy": members[:10].tolist(), "hard": members[10:18].tolist(), "junk": members[18:].tolist()})
    return database, np.stack(queries, axis=1).astype(np.float32), gnd


def ensure_store(args):
    """The distractor store (random unit float16 descriptors), written once."""
    images = [f"distractor_{i:07d}.jpg" for i in range(args.distractors)]
    key = StoreKey(DescriptorKey("benchmark" + str(args.dim), 1024), "random", "float16", args.shard_size)
    store = DescriptorStore.create(Path(args.folder), images, key, args.dim)
    for k in store.missing():
        store.write_shard(k, unit_columns(np.random.default_rng([1, k]), args.dim, len(store.shard_rows(k))))
    store.record_hashes()
    return store


def run_blocked(args, database, queries, gnd):
    store = open_store(Path(args.folder))
    start = time.perf_counter()
    places = positions_with_distractors(database, queries, store.blocks(), args.device)
    result = evaluate_positions(places, gnd, "revisited")
    return {"load_s": 0.0, "search_s": time.perf_counter() - start, "map_medium": result["medium"]["map"]}


def run_numpy(args, database, queries, gnd):
    store = open_store(Path(args.folder))
    start = time.perf_counter()
    everything = np.empty((database.shape[1] + store.count, args.dim), dtype=np.float32)  # X^T, all in memory
    everything[:database.shape[1]] = database.T
    for first, block in store.blocks():
        everything[database.shape[1] + first:database.shape[1] + first + len(block)] = block
    loaded = time.perf_counter()
    scores = everything @ queries  # the original: scores = np.dot(X.T, Q); ranks = np.argsort(-scores, axis=0)
    ranks = np.argsort(-scores, axis=0)
    result = evaluate_ranks(ranks, gnd, "revisited")
    return {"load_s": loaded - start, "search_s": time.perf_counter() - loaded, "map_medium": result["medium"]["map"]}


def run_faiss(args, database, queries, gnd):
    import faiss

    store = open_store(Path(args.folder))
    start = time.perf_counter()
    index = faiss.IndexFlatIP(args.dim)
    index.add(np.ascontiguousarray(database.T))
    for _, block in store.blocks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    loaded = time.perf_counter()
    index.search(np.ascontiguousarray(queries.T), 100)
    return {"load_s": loaded - start, "search_s": time.perf_counter() - loaded, "map_medium": None}


RUNNERS = {"blocked": run_blocked, "numpy": run_numpy, "faiss": run_faiss}


def worker(args) -> None:
    database, queries, gnd = problem(args)
    result = RUNNERS[args.method](args, database, queries, gnd)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distractors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=70)
    parser.add_argument("--database", type=int, default=4993, help="test database images (rOxford5k: 4993)")
    parser.add_argument("--shard-size", type=int, default=16384)
    parser.add_argument("--folder", default="/tmp/aml-search-benchmark", help="where the distractor store is written")
    parser.add_argument("--device", default="cpu", help="device of the blocked search (cpu, cuda)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--method", help=argparse.SUPPRESS)
    add_json_argument(parser, "search")
    args = parser.parse_args()
    if args.method:
        worker(args)
        return
    start = time.perf_counter()
    ensure_store(args)
    store_s = time.perf_counter() - start
    print(f"store of {args.distractors} x {args.dim} float16 in {args.folder} ready in {store_s:.0f} s", flush=True)
    rows = []
    print("| method | load s | search s | peak RSS GB | mAP medium |")
    print("|---|---|---|---|---|")
    shared = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
              if name not in ("methods", "method", "json")]
    for method in args.methods.split(","):
        command = [sys.executable, __file__, "--method", method] + shared
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"| {method} | failed: {done.stderr.strip().splitlines()[-1]} | | | |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        shown = "top-100 only" if r["map_medium"] is None else f"{100 * r['map_medium']:.2f}"
        device = args.device if method == "blocked" else "cpu"
        print(f"| {method} ({device}) | {r['load_s']:.1f} | {r['search_s']:.1f} | {r['peak_rss_gb']:.2f} | {shown} |",
              flush=True)
        rows.append(dict(r, method=method, device=device))
    settings = {k: v for k, v in vars(args).items() if k not in ("method", "json")}
    write_record(args.json, "search", settings, {"store_s": store_s, "methods": rows})


if __name__ == "__main__":
    main()
