#!/usr/bin/env python
"""Benchmark of search + evaluation at revisitop1m scale: a database of N descriptors and
70 queries, ranked (one matrix product and a sort) and scored with the E/M/H protocol; then
the sort alone at several database sizes: aml's (numpy's introsort of contiguous rows, ties
put in index order), torch's stable sort, and the original's (numpy's quicksort of the
columns of the N x Q score matrix, ties in no particular order).

    python benchmarks/metrics.py --database 1000000 --dim 128
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aml.evaluation.metrics import evaluate_ranks
from aml.evaluation.ranking import descending_order, rank_database

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)
from timing import best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=70)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--sort-sizes", default="5000,100000,1000000", type=lambda v: [int(n) for n in v.split(",")])
    add_json_argument(parser, "metrics")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    database = rng.standard_normal((args.dim, args.database), dtype=np.float32)
    database /= np.linalg.norm(database, axis=0)
    queries = database[:, rng.choice(args.database, args.queries, replace=False)]
    gnd = [{"easy": rng.choice(args.database, 20, replace=False), "hard": rng.choice(args.database, 30, replace=False),
            "junk": rng.choice(args.database, 10, replace=False)} for _ in range(args.queries)]
    start = time.perf_counter()
    ranks = rank_database(database, queries)
    ranked = time.perf_counter()
    results = evaluate_ranks(ranks, gnd, "revisited")
    done = time.perf_counter()
    print(f"database {args.database} x {args.dim}-d, {args.queries} queries: ranking {ranked - start:.2f} s, "
          f"mAP E/M/H + mP@k {done - ranked:.2f} s (M mAP {100 * results['medium']['map']:.2f})")
    sorting = [sort_times(rng, args.queries, size) for size in args.sort_sizes]
    for row in sorting:
        print(f"sorting {args.queries} x {row['database']}: aml {row['aml_s'] * 1e3:.1f} ms, torch stable "
              f"{row['torch_stable_s'] * 1e3:.1f} ms, the original's column quicksort {row['original_s'] * 1e3:.1f} ms")
    write_record(args.json, "metrics", {k: v for k, v in vars(args).items() if k != "json"},
                 {"ranking_s": ranked - start, "evaluation_s": done - ranked, "map_medium": results["medium"]["map"],
                  "sorting": sorting}, device="cpu")


def sort_times(rng: np.random.Generator, queries: int, size: int) -> dict:
    """Seconds (best of 3) to order ``queries`` rows of ``size`` float32 scores, three ways."""
    scores = rng.standard_normal((queries, size), dtype=np.float32)
    columns = np.ascontiguousarray(scores.T)  # the original's N x Q matrix
    return {"database": size, "aml_s": best_of(lambda: descending_order(scores)),
            "torch_stable_s": best_of(lambda: torch.argsort(torch.from_numpy(scores), dim=1, descending=True, stable=True)),
            "original_s": best_of(lambda: np.argsort(-columns, axis=0))}


if __name__ == "__main__":
    main()
