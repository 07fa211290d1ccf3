#!/usr/bin/env python
"""Benchmark of search + evaluation at revisitop1m scale: a database of N descriptors and
70 queries, ranked (one matrix product and a sort) and scored with the E/M/H protocol.

    python benchmarks/metrics.py --database 1000000 --dim 128
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from aml.evaluation.metrics import evaluate_ranks
from aml.evaluation.search import rank_database

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=70)
    parser.add_argument("--dim", type=int, default=128)
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
    write_record(args.json, "metrics", {k: v for k, v in vars(args).items() if k != "json"},
                 {"ranking_s": ranked - start, "evaluation_s": done - ranked, "map_medium": results["medium"]["map"]})


if __name__ == "__main__":
    main()
