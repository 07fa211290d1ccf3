#!/usr/bin/env python
"""How long the neighbour search of database-side augmentation takes: every database
descriptor's k nearest others (`aml.evaluation.ranking.nearest` with ``skip_self``, what
``python -m aml.search index --dba K`` runs), against sorting each query's whole row of
scores (the same chunks, `rank_database`'s sort), which gives the same neighbours.

    python benchmarks/neighbours.py                              # 10,000 x 512, k = 10, CPU
    python benchmarks/neighbours.py --images 1000000 --dim 2048 --device cuda

Random unit descriptors; the smallest of ``--repeats`` times of each way; the two results are
checked equal.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from aml.evaluation.ranking import NEIGHBOUR_CHUNK, SCORE_VALUES, descending_order, nearest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)
from timing import best_of  # noqa: E402


def whole_rows(database: np.ndarray, k: int, device: str) -> np.ndarray:
    """k x N neighbours by a stable sort of every query's whole row of scores, in `nearest`'s chunks."""
    db = torch.as_tensor(database, device=device)
    chunk = max(1, min(NEIGHBOUR_CHUNK, SCORE_VALUES // db.shape[1]))
    found = []
    for start in range(0, db.shape[1], chunk):
        scores = db[:, start : start + chunk].t() @ db
        rows = torch.arange(scores.shape[0], device=device)
        scores[rows, rows + start] = -torch.inf
        if scores.device.type == "cpu":
            found.append(descending_order(scores.numpy())[:, :k])
        else:
            found.append(torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k].cpu().numpy())
    return np.concatenate(found).T


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    add_json_argument(parser, "neighbours")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    database = rng.standard_normal((args.dim, args.images)).astype(np.float32)
    database /= np.linalg.norm(database, axis=0, keepdims=True)
    ours = nearest(database, database, args.k, args.device, skip_self=True)
    if not np.array_equal(ours, whole_rows(database, args.k, args.device)):
        raise SystemExit("the two ways found other neighbours")
    results = {
        "top k (nearest)": best_of(lambda: nearest(database, database, args.k, args.device, skip_self=True),
                                   args.repeats),
        "whole rows sorted": best_of(lambda: whole_rows(database, args.k, args.device), args.repeats),
    }
    print(", ".join(f"{way} {seconds:.2f} s" for way, seconds in results.items()))
    settings = {key: value for key, value in vars(args).items() if key != "json"}
    write_record(args.json, "neighbours", settings, results)
    return results


if __name__ == "__main__":
    main()
