#!/usr/bin/env python
"""What re-ranking adds on the synthetic test sets: plain, +αQE, +DBA and both, for a teacher
tested symmetrically and a student tested asymmetrically against it.

    python benchmarks/reranking.py --data-root DATA --teacher TEACHER.pth.tar --student STUDENT.pth.tar \\
        [--image-size 96] [--qe 3] [--dba 3] [--json FILE]   # default: benchmarks/results/reranking.json

Runs test.py in this process, twice per network, each time with ``--results FILE`` (kept in
``--out``): ``--qe K`` (the plain and the +αQE entries) and ``--qe K --dba K`` (the +DBA entry,
the first search after DBA, and +both). The networks are tested without whitening, on
synth-oxford and synth-paris; the database descriptors go to the data root's cache, so each
database is encoded once per network. It prints the mAP table and writes it, with the
machine and versions, as JSON.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from aml.cli import test as test_cli
from aml.evaluation.reranking import DEFAULT_ALPHA, Reranking

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

DATASETS = ("synth-oxford", "synth-paris")
LEVELS = ("medium", "hard")


def run_test(args: argparse.Namespace, network: str, asymmetric: bool, flags: List[str], out: Path) -> Dict[str, Any]:
    """test.py with ``flags``; the results as written to ``--results``."""
    argv = ["-npath", network, "-d", ",".join(DATASETS), "-imsize", str(args.image_size), "-j", str(args.workers),
            "--device", args.device, "--data-root", args.data_root, "-q", "--results", str(out)] + flags
    if asymmetric:
        argv += ["--asym", "--teacher", args.teacher]
    test_cli.main(argv)
    return json.loads(out.read_text(encoding="utf-8"))["results"]


def measure(args: argparse.Namespace, out: Path) -> List[Dict[str, Any]]:
    """One row per (network, re-ranking): mAP (%) Medium and Hard per data set."""
    qe, both = Reranking(qe=args.qe), Reranking(qe=args.qe, dba=args.dba)
    variants = {"plain": ("qe", "plain"), qe.label(): ("qe", qe.result_keys("plain")[-1]),
                f"dba{args.dba}": ("both", both.result_keys("plain")[0]),
                both.label(): ("both", both.result_keys("plain")[-1])}
    rows = []
    for name, network, asymmetric in (("teacher", args.teacher, False), ("student", args.student, True)):
        runs = {"qe": run_test(args, network, asymmetric, ["--qe", str(args.qe)], out / f"{name}_qe.json"),
                "both": run_test(args, network, asymmetric, ["--qe", str(args.qe), "--dba", str(args.dba)],
                                 out / f"{name}_qe_dba.json")}
        for d in DATASETS:  # the plain search does not depend on the re-ranking asked for
            assert runs["qe"][d]["plain"] == runs["both"][d]["plain"], d
        for label, (run, key) in variants.items():
            rows.append({"network": name, "test": "asymmetric" if asymmetric else "symmetric", "reranking": label,
                         "map": {d: {level: round(100 * runs[run][d][key][level]["map"], 2) for level in LEVELS}
                                 for d in DATASETS}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="holds test/synth-oxford and test/synth-paris")
    parser.add_argument("--teacher", required=True, help="the teacher's checkpoint (tested symmetrically)")
    parser.add_argument("--student", required=True, help="the student's checkpoint (tested against the teacher)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--qe", type=int, default=3, help="αQE's neighbours (default: 3)")
    parser.add_argument("--dba", type=int, default=3, help="DBA's neighbours (default: 3)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="where test.py's --results files go (default: a temporary folder)")
    add_json_argument(parser, "reranking")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = measure(args, out)
    print(f"{'network':8s} {'test':10s} {'re-ranking':14s} " + " ".join(f"{d + ' ' + lv[0].upper():>15s}"
                                                                      for d in DATASETS for lv in LEVELS))
    for row in rows:
        print(f"{row['network']:8s} {row['test']:10s} {row['reranking']:14s} "
              + " ".join(f"{row['map'][d][lv]:15.2f}" for d in DATASETS for lv in LEVELS))
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "out")}
    settings["alpha"] = DEFAULT_ALPHA
    write_record(args.json, "reranking", settings, {"rows": rows})


if __name__ == "__main__":
    main()
