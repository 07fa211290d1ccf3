#!/usr/bin/env python
"""What re-ranking adds on the synthetic test sets: plain, +αQE, +DBA, +SuperGlobal and their
combinations, for a teacher tested symmetrically and a student tested asymmetrically against it.

    python benchmarks/reranking.py --data-root DATA --teacher TEACHER.pth.tar --student STUDENT.pth.tar \\
        [--image-size 96] [--qe 3] [--dba 3] [--superglobal 400] [--sg-k 9] [--sg-beta 0.15] [--json FILE]
        # default: benchmarks/results/reranking.json

Runs test.py in this process, four times per network, each time with ``--results FILE`` (kept in
``--out``) and ``--superglobal M``, which comes last: alone (the plain and +SuperGlobal entries),
with ``--qe K`` (+αQE, and +αQE +SuperGlobal), with ``--dba K`` (+DBA, the first search after
DBA, and +DBA +SuperGlobal) and with both (+DBA +αQE, and all three). The networks are tested without whitening, on
synth-oxford and synth-paris; the database descriptors go to the data root's cache, so each
database is encoded once per network. It prints the mAP table and writes it, with the
machine and versions, as JSON.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from aml.cli import test as test_cli
from aml.data.testsets import REPORTED_LEVELS
from aml.evaluation.reranking import DEFAULT_ALPHA, Reranking
from aml.evaluation.superglobal import PAPER_BETA, PAPER_K, PAPER_M, SuperGlobal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

DATASETS = ("synth-oxford", "synth-paris")


def flags(reranking: Reranking) -> List[str]:
    """test.py's flags of ``reranking`` (its alphas are the default)."""
    sg = reranking.superglobal
    return (["--qe", str(reranking.qe)] * bool(reranking.qe) + ["--dba", str(reranking.dba)] * bool(reranking.dba)
            + (["--superglobal", str(sg.m), "--sg-k", str(sg.k), "--sg-beta", str(sg.beta)] if sg else []))


def run_test(args: argparse.Namespace, network: str, asymmetric: bool, reranking: Reranking,
             out: Path) -> Dict[str, Any]:
    """test.py with ``reranking``; the results as written to ``--results``."""
    argv = ["-npath", network, "-d", ",".join(DATASETS), "-imsize", str(args.image_size), "-j", str(args.workers),
            "--device", args.device, "--data-root", args.data_root, "-q", "--results", str(out)] + flags(reranking)
    if asymmetric:
        argv += ["--asym", "--teacher", args.teacher]
    test_cli.main(argv)
    return json.loads(out.read_text(encoding="utf-8"))["results"]


def measure(args: argparse.Namespace, out: Path) -> List[Dict[str, Any]]:
    """One row per (network, re-ranking): mAP (%) Medium and Hard per data set."""
    sg = SuperGlobal(args.superglobal, args.sg_k, args.sg_beta)
    without = [Reranking(), Reranking(qe=args.qe), Reranking(dba=args.dba), Reranking(qe=args.qe, dba=args.dba)]
    runs = [dataclasses.replace(reranking, superglobal=sg) for reranking in without]  # each also gives its stages
    rows = []
    for name, network, asymmetric in (("teacher", args.teacher, False), ("student", args.student, True)):
        found = [run_test(args, network, asymmetric, run, out / f"{name}_{i}.json") for i, run in enumerate(runs)]
        for d in DATASETS:  # the plain search does not depend on the re-ranking asked for
            assert all(results[d]["plain"] == found[0][d]["plain"] for results in found), d
        for variant in without + runs:
            key = f"plain + {variant.label()}" if variant.active else "plain"
            results = next(results for run, results in zip(runs, found) if variant in [Reranking()] + run.stages())
            rows.append({"network": name, "test": "asymmetric" if asymmetric else "symmetric",
                         "reranking": variant.label() or "plain",
                         "map": {d: {level: round(100 * results[d][key][level]["map"], 2) for level in REPORTED_LEVELS}
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
    parser.add_argument("--superglobal", type=int, default=PAPER_M,
                        help=f"SuperGlobal's first results re-ranked (default: {PAPER_M}, the paper's)")
    parser.add_argument("--sg-k", type=int, default=PAPER_K, help=f"SuperGlobal's neighbours (default: {PAPER_K})")
    parser.add_argument("--sg-beta", type=float, default=PAPER_BETA,
                        help=f"SuperGlobal's weight of the neighbours (default: {PAPER_BETA:g})")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="where test.py's --results files go (default: a temporary folder)")
    add_json_argument(parser, "reranking")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = measure(args, out)
    print(f"{'network':8s} {'test':10s} {'re-ranking':22s} " + " ".join(f"{d + ' ' + lv[0].upper():>15s}"
                                                                      for d in DATASETS for lv in REPORTED_LEVELS))
    for row in rows:
        print(f"{row['network']:8s} {row['test']:10s} {row['reranking']:22s} "
              + " ".join(f"{row['map'][d][lv]:15.2f}" for d in DATASETS for lv in REPORTED_LEVELS))
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "out")}
    settings["alpha"] = DEFAULT_ALPHA
    write_record(args.json, "reranking", settings, {"rows": rows})


if __name__ == "__main__":
    main()
