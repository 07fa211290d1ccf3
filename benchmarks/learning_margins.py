"""Measure the outcomes that the learning tests assert, over seeds and CPU kernel sets.

Runs ``pytest -m learning`` with AML_TEST_SEED = each seed, under the machine's default
kernels, under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (a machine without AVX-512)
and under ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 (an older one),
and prints every ``LEARNING`` line the tests print. The tests' margins are set to about half
the smallest gain seen here. ``--jobs 2`` runs two of these pytest runs at a time with one
thread each, as ``make test``'s two workers run them.
Usage: python benchmarks/learning_margins.py [--seeds 0,1,2] [--kernels default,avx2] [-k expr] [--jobs N]
"""

import argparse
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

from aml.utils.cpu import threads_per_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

REPO = Path(__file__).resolve().parents[1]
KERNELS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
           "sse41": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}}


def run_one(kernels: str, seed: str, expression: str, threads: int) -> List[str]:
    """One pytest run of the learning tests (``threads`` torch threads, 0: torch's default);
    its LEARNING lines and its status."""
    env = dict(os.environ, AML_TEST_SEED=seed, **KERNELS[kernels])
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-m", "learning", "tests", "-p", "no:cacheprovider",
               "-p", "no:xdist"] + (["-k", expression] if expression else [])
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [f"{kernels:8s} {line[line.index('LEARNING'):]}" for line in run.stdout.splitlines() if "LEARNING" in line]
    status = "passed" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
    return lines + [f"{kernels:8s} seed {seed}: {status}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"among {', '.join(KERNELS)}")
    parser.add_argument("-k", default="", help="pytest -k expression (a subset of the learning tests)")
    parser.add_argument("--jobs", type=int, default=1, help="pytest runs at a time (default 1)")
    add_json_argument(parser, "learning_margins")
    args = parser.parse_args()
    unknown = set(args.kernels.split(",")) - set(KERNELS)
    if unknown or args.jobs < 1:
        parser.error(f"--kernels among {sorted(KERNELS)}, not {sorted(unknown)}" if unknown else "--jobs: at least 1")
    configs: List[Tuple[str, str]] = [(k, s) for k in args.kernels.split(",") for s in args.seeds.split(",")]
    threads = threads_per_process(args.jobs) if args.jobs > 1 else 0
    with ThreadPoolExecutor(args.jobs) as pool:
        futures: Dict[Tuple[str, str], Future] = {c: pool.submit(run_one, *c, args.k, threads) for c in configs}
        runs = []
        for config in configs:
            lines = futures[config].result()
            for line in lines:
                print(line, flush=True)
            runs.append({"kernels": config[0], "seed": int(config[1]), "status": lines[-1].split(": ", 1)[1],
                         "measurements": [line.split("LEARNING ", 1)[1] for line in lines[:-1]]})
    write_record(args.json, "learning_margins", {k: v for k, v in vars(args).items() if k != "json"}, runs, device="cpu")


if __name__ == "__main__":
    main()
